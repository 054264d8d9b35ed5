"""The review web app (Flask), served by werkzeug's threaded server on 127.0.0.1 by default.

Pages and assets come from this package (``pipelines/review/static``); nothing is fetched from outside.

| route | what |
| --- | --- |
| ``GET /`` | the single-page app (``static/index.html``, ``review.js``, ``viewer.js``, ``review.css``) |
| ``GET /api/info`` | the run: counts, splits, top sources, the figures, body models, warnings |
| ``GET /api/persons`` | a grid page: ``f`` (``FIELD:OP[:VALUE]``, repeated) and the parameters below |
| ``GET /api/position`` | where ``key`` sits in the filtered, sorted set (same parameters) |
| ``GET /api/person?key=K`` | one person: every record field, every figure, its decision |
| ``GET /api/overlay.jpg?key=K`` | the overlay JPEG: ``size`` (px), ``mesh`` / ``kp`` (0 or 1), ``parts`` |
| ``GET /api/mesh.bin?key=K`` | the EHM mesh in the camera frame (format in :func:`mesh_bytes`) |
| ``POST /api/decision`` | JSON ``{key, decision, note}``; ``decision``: accept, reject, flag or clear |
| ``GET /api/quarantine`` | a quarantine page: ``stage``, ``reason``, ``source``, ``split``, ``offset``, ``limit`` |
| ``GET /api/stats``, ``/api/stats/NAME.png`` | the ``pearl stats`` tables and plots (computed once, in background) |

The grid parameters: ``source``, ``split`` (repeated), ``decision`` (repeated), ``sort``, ``order`` (``asc`` /
``desc``), ``offset``, ``limit`` (see :class:`pipelines.review.query.PersonQuery`); ``parts`` of an overlay:
``body,hands,face`` or a subset. Errors come back as JSON ``{"error": message}`` with status 400 (bad
parameters) or 404 (no such person).
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.review.data import MAX_PAGE, OVERLAY_COLUMNS, ReviewRun
from pipelines.review.fields import GROUPS, review_fields
from pipelines.review.overlay import PARTS, MeshModel, encode_jpeg, render_overlay
from pipelines.review.query import DECISIONS, PersonQuery, QuarantineQuery, QueryError

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)

MESH_MAGIC = b"PRLM"
"""First four bytes of ``/api/mesh.bin``."""
DEFAULT_THUMB = 192
"""Thumbnail side in px."""


def mesh_bytes(vertices: np.ndarray, faces: np.ndarray, parts: np.ndarray) -> bytes:
    """The mesh as little-endian binary: ``b"PRLM"``, uint32 vertex count V, uint32 face count F, float32
    vertices ``[V, 3]`` (camera frame, metres), uint32 faces ``[F, 3]``, uint8 part per vertex ``[V]``
    (0 body, 1 hands, 2 face)."""
    v = np.ascontiguousarray(vertices, "<f4")
    f = np.ascontiguousarray(faces, "<u4")
    p = np.ascontiguousarray(parts, "u1")
    return MESH_MAGIC + struct.pack("<II", len(v), len(f)) + v.tobytes() + f.tobytes() + p.tobytes()


@dataclass
class ReviewState:
    """What the app serves: the run, the mesh model, warnings for the page, the stats (lazily)."""

    run: ReviewRun
    mesh: MeshModel
    body_models: dict[str, Any] = field(default_factory=dict)
    """``folder``, ``kit`` of the body models used for the meshes (once resolved)."""
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, Any] | None = None
    plots: dict[str, bytes] = field(default_factory=dict)
    stats_error: str | None = None
    _stats_lock: threading.Lock = field(default_factory=threading.Lock)
    _stats_thread: threading.Thread | None = None

    def prepare(self, body_models: str | None, *, check_hashes: bool = True) -> threading.Thread:
        """In a background thread: resolve ``body_models`` as ``pearl annotate`` does
        (:func:`pipelines.io.body_models.resolve_body_models`: a folder, ``synthetic``, or None for
        ``$PEARL_BODY_MODELS`` else the synthetic kit), load the EHM, and compare the folder's file hashes
        with the run's."""
        def work() -> None:
            from pipelines.io.body_models import BodyModelsError, resolve_body_models

            t0 = time.perf_counter()
            try:
                models = resolve_body_models(body_models)
            except BodyModelsError as exc:
                self.mesh.fail(str(exc))
            except Exception as exc:  # noqa: BLE001 - shown on the page; the review goes on without meshes
                self.mesh.fail(f"{type(exc).__name__}: {exc}")
            else:
                self.body_models.update(folder=models.folder, kit=models.kit)
                self.mesh.set_folder(models.folder)
            self.mesh.load()
            if self.mesh.error:
                self.warnings.append(f"meshes are not drawn: {self.mesh.error}")
            elif check_hashes:
                self.warnings.extend(hash_warnings(self.run, self.mesh.folder))
            log.info("body models ready in %.1f s", time.perf_counter() - t0)

        thread = threading.Thread(target=work, name="review-prepare", daemon=True)
        thread.start()
        return thread

    def stats_status(self) -> dict[str, Any]:
        with self._stats_lock:
            if self.stats is None and self.stats_error is None and self._stats_thread is None:
                self._stats_thread = threading.Thread(target=self._compute_stats, name="review-stats", daemon=True)
                self._stats_thread.start()
        if self.stats_error:
            return {"status": "error", "error": self.stats_error}
        if self.stats is None:
            return {"status": "running"}
        return {"status": "ready", "tables": self.stats["tables"], "plots": list(self.plots),
                "persons": self.stats["persons"], "quarantined": self.stats["quarantined"]}

    def _compute_stats(self) -> None:
        from pipelines.review.stats import compute_stats, render_plots

        try:
            stats = compute_stats(self.run)
            self.plots = render_plots(self.run, stats)
            self.stats = stats
        except Exception as exc:  # noqa: BLE001 - shown on the page
            log.exception("stats failed")
            self.stats_error = f"{type(exc).__name__}: {exc}"


def hash_warnings(run: ReviewRun, folder: str | None) -> list[str]:
    """A warning when the body-model files in ``folder`` differ from those the run was made with."""
    from pathlib import Path

    from model.assets.check import asset_hashes

    expected = run.asset_hashes()
    if not folder or not expected:
        return []
    found = asset_hashes(Path(folder))
    differ = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
    if not differ:
        return []
    return [f"the body-model files in {folder} differ from those the run was made with ({len(differ)} file(s), e.g. "
            f"{differ[0]}; run kit: {run.body_model_kit() or 'unknown'}): meshes may not match the annotation. Pass "
            "the run's own --body-models."]


def _args(request: Any) -> dict[str, list[str]]:
    return {k: request.args.getlist(k) for k in request.args}


def _int(request: Any, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name, "")
    try:
        value = int(raw) if raw != "" else default
    except ValueError:
        raise QueryError(f"{name} {raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise QueryError(f"{name} must lie in [{lo}, {hi}], got {value}")
    return value


def _json_value(value: Any) -> Any:
    """JSON-ready: arrays as (nested) lists rounded to 6 decimals, NaN and infinities as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            rounded = np.round(value.astype(np.float64), 6)
            if np.isfinite(rounded).all():
                return rounded.tolist()
            return np.where(np.isfinite(rounded), rounded, None).tolist()
        return value.tolist()
    if isinstance(value, float):
        return None if value != value or value in (float("inf"), float("-inf")) else round(value, 6)
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def create_app(state: ReviewState) -> Flask:
    """The Flask app over ``state`` (see the module docstring for the routes)."""
    from flask import Flask, Response, abort, jsonify, request, send_file

    static = resources.files("pipelines.review") / "static"
    app = Flask("pearl-review", static_folder=str(static), static_url_path="/static")
    app.json.sort_keys = False
    run = state.run

    @app.errorhandler(QueryError)
    @app.errorhandler(ValueError)
    def bad_request(exc: Exception) -> Any:
        return jsonify(error=str(exc)), 400

    @app.errorhandler(KeyError)
    def not_found(exc: KeyError) -> Any:
        return jsonify(error=str(exc.args[0]) if exc.args else "not found"), 404

    @app.after_request
    def no_store(response: Response) -> Response:
        cached = ("/api/overlay", "/api/mesh", "/api/stats/")  # depend on the key alone
        if request.path.startswith("/api/") and not request.path.startswith(cached):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/")
    def index() -> Any:
        return send_file(static / "index.html", mimetype="text/html", max_age=0)

    @app.get("/favicon.ico")
    def favicon() -> Any:
        return send_file(static / "favicon.svg", mimetype="image/svg+xml", max_age=86400)

    @app.get("/api/info")
    def info() -> Any:
        fields = [{"name": f.name, "kind": f.kind, "group": f.group, "part": f.part, "doc": f.doc}
                  for f in review_fields().values()]
        return jsonify(out=run.out, persons=run.count(), quarantined=run.quarantine_count(), splits=run.splits(),
                       sources=[{"source": s, "persons": n} for s, n in run.top_sources()], fields=fields,
                       groups=list(GROUPS), parts=list(PARTS), decisions=list(DECISIONS),
                       reviewer=run.decisions.reviewer,
                       decisions_file=run.url(run.decisions.path), body_models=state.body_models,
                       mesh=state.mesh.error is None, warnings=list(state.warnings), max_page=MAX_PAGE)

    @app.get("/api/persons")
    def persons() -> Any:
        query = PersonQuery.from_params(_args(request))
        page = run.page(query, offset=_int(request, "offset", 0, 0, 2**62),
                        limit=_int(request, "limit", 48, 1, MAX_PAGE))
        return jsonify(page)

    @app.get("/api/position")
    def position() -> Any:
        query = PersonQuery.from_params(_args(request))
        return jsonify(position=run.position(query, request.args.get("key", "")))

    def _key() -> str:
        key = request.args.get("key", "")
        if not key:
            raise QueryError("give the person's key (key=...)")
        return key

    @app.get("/api/person")
    def person() -> Any:
        key = _key()
        record = run.record(key)
        if record is None:
            abort(404)
        fields = review_fields()
        names = list(fields)
        exprs = ", ".join(f"({fields[n].sql})" for n in names)
        figures = run.values(f"SELECT {exprs} FROM persons WHERE key = ?", [key])[0]
        decision = run.decisions.get(key)
        return jsonify(key=key, record={k: _json_value(v) for k, v in record.items()},
                       figures={n: _json_value(v) for n, v in zip(names, figures)},
                       decision=decision.as_json() if decision else None)

    @app.get("/api/overlay.jpg")
    def overlay() -> Any:
        key = _key()
        size = _int(request, "size", DEFAULT_THUMB, 16, 2048)
        parts = [p for p in request.args.get("parts", ",".join(PARTS)).split(",") if p]
        bad = [p for p in parts if p not in PARTS]
        if bad:
            raise QueryError(f"parts: unknown part {bad[0]!r}; parts are {', '.join(PARTS)}")
        mesh = request.args.get("mesh", "1") != "0"
        columns = list(OVERLAY_COLUMNS)
        if mesh:
            from model.ehm_record import EHM_RECORD_COLUMNS

            columns += list(EHM_RECORD_COLUMNS.values())
        record = run.record(key, columns)
        if record is None:
            raise KeyError(f"no person {key!r} in {run.out}")
        image = render_overlay(record, run.crop_jpeg(key, record["filename"]), state.mesh, size=size, mesh=mesh,
                               keypoints=request.args.get("kp", "1") != "0", parts=parts)
        response = Response(encode_jpeg(image), mimetype="image/jpeg")
        response.headers["Cache-Control"] = "private, max-age=3600"
        return response

    @app.get("/api/mesh.bin")
    def mesh() -> Any:
        from model.ehm_record import EHM_RECORD_COLUMNS

        key = _key()
        record = run.record(key, ["has_body", *EHM_RECORD_COLUMNS.values()])
        if record is None:
            raise KeyError(f"no person {key!r} in {run.out}")
        if not bool(record["has_body"]):
            raise KeyError(f"{key!r} has no body (has_body is False): keypoints only")
        vertices = state.mesh.vertices(record)
        if vertices is None:
            raise KeyError(f"no mesh: {state.mesh.error}")
        data = mesh_bytes(vertices.numpy(), state.mesh.faces.numpy(), state.mesh.vertex_parts().numpy())
        response = Response(data, mimetype="application/octet-stream")
        response.headers["Cache-Control"] = "private, max-age=3600"
        return response

    @app.post("/api/decision")
    def decision() -> Any:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in ("key", "decision")):
            raise QueryError('post JSON {"key": ..., "decision": "accept" | "reject" | "flag" | "clear", "note": ...}')
        stored = run.decide(body["key"], body["decision"], str(body.get("note") or ""))
        return jsonify(key=body["key"], decision=stored.as_json() if stored else None)

    @app.get("/api/quarantine")
    def quarantine() -> Any:
        query = QuarantineQuery.from_params(_args(request))
        return jsonify(run.quarantine_page(query, offset=_int(request, "offset", 0, 0, 2**62),
                                           limit=_int(request, "limit", 100, 1, MAX_PAGE)))

    @app.get("/api/stats")
    def stats() -> Any:
        return jsonify(state.stats_status())

    @app.get("/api/stats/<name>.png")
    def stats_plot(name: str) -> Any:
        data = state.plots.get(f"{name}.png")
        if data is None:
            raise KeyError(f"no plot {name!r} (yet)")
        return Response(data, mimetype="image/png")

    return app


class ReviewServer:
    """The app on werkzeug's threaded server; :meth:`serve_forever` or :meth:`start` (a daemon thread)."""

    def __init__(self, state: ReviewState, host: str = "127.0.0.1", port: int = 8000) -> None:
        from werkzeug.serving import make_server

        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request only with -vv
        self.state = state
        self.app = create_app(state)
        self._server = make_server(host, port, self.app, threaded=True)
        self.host, self.port = host, self._server.server_port
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def start(self) -> ReviewServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="review-server", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server.server_close()


def open_review(out: str, *, body_models: str | None = None, mesh: bool = True, reviewer: str | None = None,
                filesystem: Any = None) -> ReviewState:
    """Open ``out`` for review and start resolving and loading the body models in the background
    (:meth:`ReviewState.prepare`); ``mesh=False`` draws keypoints only."""
    run = ReviewRun(out, filesystem=filesystem, reviewer=reviewer)
    state = ReviewState(run, MeshModel())
    if mesh:
        state.prepare(body_models)
    else:
        state.mesh.fail("--no-mesh: keypoints only")
        state.warnings.append("meshes are not drawn (--no-mesh): keypoints only")
    return state
