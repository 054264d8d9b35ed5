"""The synthetic humanoid's surfaces: head (FLAME layout), hand (MANO layout) and body pieces.

Each builder returns a :class:`~model.assets.geometry.Part` in its own natural vertex order, skinned
to *local* joint names (``HEAD_JOINTS``, ``layouts.MANO_JOINTS`` or the SMPL/SMPL-X body names), with
tags naming the vertices other files refer to:

- ``joint:<name>``: the vertices whose mean is that joint at rest (a ring around the joint, an eyeball);
- ``grp:<group>``: all vertices of a piece (torso, leg_l, head, hand, ...), for shape fields;
- feature vertices: ``nose``, ``ear_l``, ``eye_l``, ``tip:<finger>``, ``tip2:<finger>``, ``L:bigtoe``, ...

Frames: metres, y up, z forward, x to the person's left. The head is built in FLAME's frame
(neck base at y = -0.155), the hand in MANO's right-hand frame (wrist at ``MANO_WRIST``, fingers
along -x, palm facing -y, thumb towards +z), body pieces in the body frame (floor at y = ``FLOOR_Y``).
"""

from __future__ import annotations

import numpy as np

from model.assets.geometry import Part, blend_towards, chain_weights, concat_parts, make_sphere, make_tube, samples_with, smoothstep
from model.assets import layouts
from model.assets.layouts import MANO_JOINTS

FLOOR_Y = -1.30
HEAD_JOINTS = layouts.FLAME_JOINTS  # the head is skinned to FLAME's joints
MANO_WRIST = np.array([0.0957, 0.0064, 0.0062])  # where MANO's right wrist sits in its own frame

# ----------------------------------------------------------------------------------------------
# head
# ----------------------------------------------------------------------------------------------

# y, z of the centre line, half-width (x), half-depth (z); FLAME frame
_HEAD_PROFILE = np.array([
    [-0.155, -0.012, 0.057, 0.056],
    [-0.120, -0.014, 0.054, 0.053],
    [-0.095, -0.010, 0.055, 0.058],
    [-0.080, 0.006, 0.058, 0.072],
    [-0.060, 0.014, 0.064, 0.084],
    [-0.030, 0.012, 0.069, 0.090],
    [0.000, 0.008, 0.074, 0.094],
    [0.030, 0.004, 0.077, 0.096],
    [0.060, 0.000, 0.078, 0.097],
    [0.090, -0.004, 0.074, 0.092],
    [0.115, -0.008, 0.062, 0.078],
    [0.132, -0.010, 0.040, 0.050],
    [0.140, -0.010, 0.022, 0.028],
])  # fmt: skip
HEAD_NECK_Y = -0.085  # FLAME "neck" joint (SMPL-X "head")
HEAD_JAW_Y = -0.030
EYE_Y, EYE_X, EYE_RADIUS = 0.030, 0.032, 0.0125
MOUTH_Y = -0.045


def head_profile(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre-line z, half-width and half-depth of the head at heights ``y`` [N]."""
    p = _HEAD_PROFILE
    return np.interp(y, p[:, 0], p[:, 1]), np.interp(y, p[:, 0], p[:, 2]), np.interp(y, p[:, 0], p[:, 3])


def _gauss(d: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-((d / sigma) ** 2))


def head_relief(theta: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Outward offset (m) of the head surface at angle ``theta`` and height ``y``: nose, eye
    sockets, brows, lips, chin and ears on top of the smooth profile."""
    _, rx, _ = head_profile(y)
    x = rx * np.sin(theta)
    front = smoothstep(np.cos(theta) / 0.3)  # features of the face, none on the back of the head
    nose_amp = np.interp(y, [-0.020, -0.012, -0.004, 0.040, 0.050], [0.0, 0.012, 0.024, 0.006, 0.0])
    nose_sigma = np.interp(y, [-0.020, 0.0, 0.040], [0.016, 0.014, 0.008])
    d = nose_amp * np.exp(-((x / nose_sigma) ** 2))
    for side in (-1.0, 1.0):
        d -= 0.007 * _gauss(np.hypot(x - side * EYE_X, y - EYE_Y), 0.013)
    d += 0.004 * _gauss(y - 0.052, 0.008) * _gauss(x, 0.05) ** 2
    d += 0.005 * _gauss(y - MOUTH_Y, 0.009) * _gauss(x, 0.024) ** 2
    d -= 0.003 * _gauss(y - MOUTH_Y, 0.002) * _gauss(x, 0.022) ** 2
    d += 0.006 * _gauss(y + 0.075, 0.012) * _gauss(x, 0.02)
    d = d * front
    for side in (-1.0, 1.0):  # ears
        d += 0.014 * _gauss(y - 0.008, 0.02) * _gauss((theta - side * np.pi / 2) * rx, 0.012)
    return d


def head_surface_point(x: np.ndarray, y: np.ndarray, back: bool = False) -> np.ndarray:
    """Points [N, 3] on the (relief) head surface seen along z at (x, y); front unless ``back``."""
    cz, rx, rz = head_profile(y)
    s = np.clip(x / rx, -1.0, 1.0)
    theta = np.arcsin(s)
    if back:
        theta = np.sign(theta) * np.pi - theta
    return head_surface_at(theta, y)


def head_surface_at(theta: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Point [N, 3] of the head surface at angle ``theta`` (0 = front, +pi/2 = left) and height ``y``."""
    cz, rx, rz = head_profile(y)
    radial = np.stack([np.sin(theta), np.zeros_like(theta), np.cos(theta)], -1)
    base = np.stack([rx * np.sin(theta), y, cz + rz * np.cos(theta)], -1)
    return base + head_relief(theta, y)[:, None] * radial


def eye_centre(side: float) -> np.ndarray:
    """Centre of the left (side=+1) or right (-1) eyeball in FLAME's frame."""
    surface = head_surface_point(np.array([side * EYE_X]), np.array([EYE_Y]))[0]
    return np.array([side * EYE_X, EYE_Y, surface[2] - EYE_RADIUS + 0.002])


def build_head(skin_verts: int, rings: int, eyes: bool) -> Part:
    """Head and neck (open at the neck base, closed on top); with ``eyes`` two 546-vertex eyeballs
    follow the skin (left first), as in FLAME. Skinned to ``HEAD_JOINTS``."""
    ys = samples_with([HEAD_NECK_Y, HEAD_JAW_Y], _HEAD_PROFILE[0, 0], _HEAD_PROFILE[-1, 0], rings - 2)
    cz, rx, rz = head_profile(ys)
    centers = np.stack([np.zeros_like(ys), ys, cz], 1)
    tube = make_tube(centers, [0, 0, 1.0], np.stack([rz, rx], 1), skin_verts, False, True, 0.008)
    ring_y = tube.verts[:, 1].copy()
    theta = np.angle(np.exp(1j * tube.theta))  # (-pi, pi]: negative on the right side
    relief = head_relief(theta, ring_y)
    relief[-1] = 0.0  # apex
    verts = tube.verts + relief[:, None] * tube.radial

    w = chain_weights(ring_y, 0, [(HEAD_NECK_Y, 1, 0.025)], len(HEAD_JOINTS))
    mouth_line = MOUTH_Y + 0.003 + 0.012 * np.abs(theta) / (np.pi / 2)
    jaw = (
        smoothstep((mouth_line - ring_y) / 0.008)
        * smoothstep((ring_y + 0.115) / 0.025)
        * smoothstep((np.cos(theta) + 0.2) / 0.5)
    )
    w = blend_towards(w, 2, jaw)

    def ring_at(y: float) -> np.ndarray:
        return tube.rings[int(np.argmin(np.abs(ys - y)))]

    tags = {
        "grp:head": np.arange(skin_verts),
        "joint:global": tube.rings[0],
        "joint:neck": ring_at(HEAD_NECK_Y),
        "joint:jaw": ring_at(HEAD_JAW_Y),
        "nose": _nearest(verts, head_surface_point(np.zeros(1), np.array([-0.004]))),
    }
    for side, tag in ((1.0, "l"), (-1.0, "r")):
        ear = head_surface_at(np.array([side * np.pi / 2]), np.array([0.008]))
        tags[f"ear_{tag}"] = _nearest(verts, ear)
        tags[f"eye_{tag}"] = _nearest(verts, head_surface_point(np.array([side * EYE_X]), np.array([EYE_Y])))
    part = Part(verts=verts, faces=tube.faces, radial=tube.radial, weights=w, tags=tags)
    if not eyes:
        return part
    pieces = [part]
    for side, tag, joint in ((1.0, "l", 3), (-1.0, "r", 4)):
        centre = eye_centre(side)
        ev, ef = make_sphere(centre, EYE_RADIUS, 17, 32)
        ew = np.zeros((len(ev), len(HEAD_JOINTS)))
        ew[:, joint] = 1.0
        idx = np.arange(len(ev))
        pieces.append(
            Part(
                verts=ev,
                faces=ef,
                radial=(ev - centre) / EYE_RADIUS,
                weights=ew,
                tags={f"joint:{HEAD_JOINTS[joint]}": idx, f"grp:eye_{tag}": idx, f"pupil_{tag}": idx[:1]},
            )
        )
    merged, _ = concat_parts(pieces)
    return merged


def _nearest(verts: np.ndarray, point: np.ndarray) -> np.ndarray:
    return np.array([int(np.argmin(((verts - point.reshape(1, 3)) ** 2).sum(1)))])


# ----------------------------------------------------------------------------------------------
# hand (MANO right-hand frame)
# ----------------------------------------------------------------------------------------------

# finger: (knuckle offset from the wrist, segment lengths, radius, spread direction z)
_FINGERS = {
    "index": (np.array([-0.084, -0.002, 0.024]), (0.040, 0.024, 0.022), 0.0095, 0.08),
    "middle": (np.array([-0.088, -0.002, 0.004]), (0.044, 0.028, 0.023), 0.0098, 0.0),
    "pinky": (np.array([-0.078, -0.002, -0.030]), (0.032, 0.020, 0.019), 0.0082, -0.15),
    "ring": (np.array([-0.085, -0.002, -0.014]), (0.041, 0.026, 0.022), 0.0092, -0.07),
}
_THUMB = (np.array([-0.025, -0.010, 0.020]), (0.038, 0.033, 0.028), 0.0115, np.array([-0.75, -0.2, 0.62]))


def finger_frame_direction(spread: float) -> np.ndarray:
    d = np.array([-1.0, 0.0, spread])
    return d / np.linalg.norm(d)


def build_hand(palm_verts: int, finger_verts: int, thumb_verts: int, spacing: float, wrist: np.ndarray = MANO_WRIST) -> Part:
    """A right hand in MANO's frame and joint order (palm open at the wrist, five closed fingers);
    ``spacing`` is the target distance between rings along the fingers."""
    nj = len(MANO_JOINTS)
    jid = {n: i for i, n in enumerate(MANO_JOINTS)}
    xs = wrist[0] + np.array([0.015, 0.0, -0.02, -0.045, -0.07, -0.088, -0.094])
    ring_x = samples_with(xs, xs[-1], xs[0], int(0.11 / (2 * spacing)))[::-1]
    half_y = np.interp(ring_x, xs[::-1], [0.012, 0.014, 0.016, 0.016, 0.016, 0.017, 0.018][::-1])
    half_z = np.interp(ring_x, xs[::-1], [0.030, 0.040, 0.044, 0.044, 0.043, 0.034, 0.030][::-1])
    centers = np.stack([ring_x, np.full_like(ring_x, wrist[1]), np.full_like(ring_x, wrist[2] - 0.003)], 1)
    palm = make_tube(centers, [0, -1.0, 0], np.stack([half_y, half_z], 1), palm_verts, False, True, 0.004)
    w = np.zeros((len(palm.verts), nj))
    w[:, 0] = 1.0
    knuckle_amount = smoothstep((wrist[0] - 0.055 - palm.verts[:, 0]) / 0.03)
    zf = np.array([wrist[2] + _FINGERS[f][0][2] for f in ("index", "middle", "pinky", "ring")])
    g = _gauss(palm.verts[:, 2:3] - zf[None], 0.012) + 1e-12
    g /= g.sum(1, keepdims=True)
    for k, f in enumerate(("index", "middle", "pinky", "ring")):
        w[:, jid[f"{f}1"]] += knuckle_amount * g[:, k]
    w[:, 0] -= knuckle_amount
    cmc = wrist + _THUMB[0]
    w = blend_towards(w, jid["thumb1"], 0.6 * _gauss(np.linalg.norm(palm.verts - cmc, axis=1), 0.02))
    wrist_ring = palm.rings[int(np.argmin(np.abs(ring_x - wrist[0])))]
    pieces = [
        Part(
            verts=palm.verts,
            faces=palm.faces,
            radial=palm.radial,
            weights=w,
            tags={"grp:palm": np.arange(len(palm.verts)), "joint:wrist": wrist_ring, "knuckles": palm.rings[-2]},
        )
    ]
    for name, (offset, lengths, radius, spread) in _FINGERS.items():
        pieces.append(_finger(name, wrist + offset, finger_frame_direction(spread), lengths, radius, finger_verts, spacing))
    t_dir = _THUMB[3] / np.linalg.norm(_THUMB[3])
    pieces.append(_finger("thumb", cmc, t_dir, _THUMB[1], _THUMB[2], thumb_verts, spacing))
    hand, _ = concat_parts(pieces)
    return hand


def _finger(name: str, base: np.ndarray, direction: np.ndarray, lengths, radius: float, total: int, spacing: float) -> Part:
    jid = {n: i for i, n in enumerate(MANO_JOINTS)}
    l1, l2, l3 = lengths
    end = l1 + l2 + l3 - radius
    key = [-0.014, 0.0, l1, l1 + l2, end]
    s = samples_with(key, key[0], end, int((end - key[0]) / spacing) + 2)
    phi = np.radians([30.0, 55.0, 75.0])
    r = radius * np.interp(s, key, [1.05, 1.0, 0.92, 0.85, 0.8])
    r_tip = r[-1]
    s = np.concatenate([s, end + r_tip * np.sin(phi)])
    r = np.concatenate([r, r_tip * np.cos(phi)])
    centers = base + s[:, None] * direction
    tube = make_tube(centers, [0, -1.0, 0], np.stack([0.9 * r, r], 1), total, True, True, r_tip * (1 - np.sin(phi[-1])))
    arc = tube.arc + key[0]
    w = chain_weights(
        arc, 0, [(0.0, jid[f"{name}1"], 0.010), (l1, jid[f"{name}2"], 0.008), (l1 + l2, jid[f"{name}3"], 0.006)], len(MANO_JOINTS)
    )

    def ring_at(value: float) -> np.ndarray:
        return tube.rings[int(np.argmin(np.abs(s - value)))]

    n = len(tube.verts)
    tags = {
        f"grp:finger_{name}": np.arange(n),
        f"joint:{name}1": ring_at(0.0),
        f"joint:{name}2": ring_at(l1),
        f"joint:{name}3": ring_at(l1 + l2),
        f"tip:{name}": np.array([n - 1]),  # end apex
        f"tip2:{name}": tube.rings[-1][:1],  # pad side of the last ring
    }
    return Part(verts=tube.verts, faces=tube.faces, radial=tube.radial, weights=w, tags=tags)


# ----------------------------------------------------------------------------------------------
# body pieces (body frame), built for the left side; the right side is their mirror image
# ----------------------------------------------------------------------------------------------


def _polyline(points: list[np.ndarray], spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Samples along a polyline through ``points`` (each kept exactly); returns (samples, arc of each point)."""
    samples, point_arc, arc0 = [points[0][None]], [0.0], 0.0
    for a, b in zip(points[:-1], points[1:]):
        length = float(np.linalg.norm(b - a))
        n = max(int(np.ceil(length / spacing)), 1)
        t = np.arange(1, n + 1) / n
        samples.append(a + t[:, None] * (b - a))
        arc0 += length
        point_arc.append(arc0)
    return np.concatenate(samples), np.array(point_arc)


def build_torso(j: dict[str, np.ndarray], total: int, widths: np.ndarray) -> Part:
    """Torso from crotch to neck base, closed at both ends. ``widths`` scales the lateral profile."""
    h = np.array([0.80, 0.86, 0.93, 1.00, 1.06, 1.12, 1.20, 1.28, 1.34, 1.39, 1.43, 1.46]) + FLOOR_Y
    rx = np.array([0.080, 0.150, 0.165, 0.155, 0.140, 0.135, 0.150, 0.165, 0.170, 0.120, 0.065, 0.057]) * widths
    rz = np.array([0.070, 0.100, 0.110, 0.105, 0.100, 0.100, 0.110, 0.115, 0.105, 0.080, 0.060, 0.055])
    spine = ["pelvis", "spine1", "spine2", "spine3"]
    ys = samples_with([j[n][1] for n in spine], h[0], h[-1], 40)
    cz = np.interp(ys, [j[n][1] for n in spine + ["neck"]], [j[n][2] for n in spine + ["neck"]])
    centers = np.stack([np.zeros_like(ys), ys, cz], 1)
    radii = np.stack([np.interp(ys, h, rz), np.interp(ys, h, rx)], 1)
    tube = make_tube(centers, [0, 0, 1.0], radii, total, True, True, 0.015)
    names = spine + ["neck"]
    w = chain_weights(
        tube.verts[:, 1], 0, [(j[n][1], k, 0.06 if n != "neck" else 0.03) for k, n in enumerate(names) if k > 0], 5
    )
    # columns: pelvis, spine1, spine2, spine3, neck, left_hip, right_hip, left_collar, right_collar,
    # left_shoulder, right_shoulder
    w = np.concatenate([w, np.zeros((len(w), 6))], 1)
    x, y = tube.verts[:, 0], tube.verts[:, 1]
    for side, hip, collar, shoulder in ((1.0, 5, 7, 9), (-1.0, 6, 8, 10)):
        on_side = (side * x > 0).astype(float)
        hip_amt = smoothstep((np.abs(x) - 0.05) / 0.08) * smoothstep((j["left_hip"][1] + 0.06 - y) / 0.08)
        w = blend_towards(w, hip, hip_amt * on_side)
        upper = smoothstep((y - (j["left_collar"][1] - 0.12)) / 0.08)
        w = blend_towards(w, collar, smoothstep((np.abs(x) - 0.06) / 0.08) * upper * on_side)
        w = blend_towards(w, shoulder, 0.6 * smoothstep((np.abs(x) - 0.13) / 0.05) * upper * on_side)

    def ring_at(value: float) -> np.ndarray:
        return tube.rings[int(np.argmin(np.abs(ys - value)))]

    tags = {"grp:torso": np.arange(len(tube.verts))}
    tags.update({f"joint:{n}": ring_at(j[n][1]) for n in spine})
    return Part(verts=tube.verts, faces=tube.faces, radial=tube.radial, weights=w, tags=tags)


TORSO_COLUMNS = [
    "pelvis", "spine1", "spine2", "spine3", "neck", "left_hip", "right_hip", "left_collar",
    "right_collar", "left_shoulder", "right_shoulder",
]  # fmt: skip


def build_leg(j: dict[str, np.ndarray], total: int, girth: float) -> Part:
    """Left leg from inside the pelvis to just below the ankle. Columns: pelvis, hip, knee, ankle."""
    top = j["left_hip"] + np.array([-0.01, 0.05, 0.0])
    end = j["left_ankle"] + np.array([0.0, -0.025, 0.0])
    pts = [top, j["left_hip"], j["left_knee"], j["left_ankle"], end]
    centers, parc = _polyline(pts, 0.016)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(centers, axis=0), axis=1))])
    thigh = parc[1] + 0.12
    calf = parc[2] + 0.12
    r = girth * np.interp(arc, [0, parc[1], thigh, parc[2], calf, parc[3], parc[4]], [0.080, 0.085, 0.072, 0.050, 0.054, 0.036, 0.030])
    tube = make_tube(centers, [0, 0, 1.0], np.stack([0.92 * r, r], 1), total, True, True, 0.01)
    w = chain_weights(tube.arc, 0, [(parc[1] + 0.02, 1, 0.05), (parc[2], 2, 0.04), (parc[3], 3, 0.03)], 4)
    rings = {n: tube.rings[int(np.argmin(np.abs(arc - parc[k])))] for k, n in ((1, "left_hip"), (2, "left_knee"), (3, "left_ankle"))}
    tags = {"grp:leg_l": np.arange(len(tube.verts))}
    tags.update({f"joint:{n}": v for n, v in rings.items()})
    return Part(verts=tube.verts, faces=tube.faces, radial=tube.radial, weights=w, tags=tags)


LEG_COLUMNS = ["pelvis", "left_hip", "left_knee", "left_ankle"]


def build_foot(j: dict[str, np.ndarray], total: int) -> Part:
    """Left foot along +z from heel to toes, sole on the floor. Columns: ankle, foot."""
    ankle, ball = j["left_ankle"], j["left_foot"]
    z_key = np.array([ankle[2] - 0.065, ankle[2], ball[2], ball[2] + 0.065])
    height = np.array([0.040, 0.050, 0.026, 0.016])  # half-height = centre height above the floor
    width = np.array([0.030, 0.040, 0.046, 0.034])
    zs = samples_with([ball[2]], z_key[0], z_key[-1], 16)
    hh = np.interp(zs, z_key, height)
    centers = np.stack([np.full_like(zs, ankle[0]), FLOOR_Y + hh, zs], 1)
    tube = make_tube(centers, [0, 1.0, 0], np.stack([hh, np.interp(zs, z_key, width)], 1), total, True, True, 0.008)
    w = chain_weights(tube.verts[:, 2], 0, [(ball[2], 1, 0.025)], 2)
    tip_z = z_key[-1] + 0.008
    tags = {
        "grp:foot_l": np.arange(len(tube.verts)),
        "joint:left_foot": tube.rings[int(np.argmin(np.abs(zs - ball[2])))],
        # the big toe is on the inner (medial) side, i.e. towards x = 0 for the left foot
        "L:bigtoe": _nearest(tube.verts, np.array([ankle[0] - 0.018, FLOOR_Y + 0.012, tip_z - 0.008])),
        "L:smalltoe": _nearest(tube.verts, np.array([ankle[0] + 0.028, FLOOR_Y + 0.010, tip_z - 0.03])),
        "L:heel": _nearest(tube.verts, np.array([ankle[0], FLOOR_Y + 0.005, z_key[0] - 0.008])),
    }
    return Part(verts=tube.verts, faces=tube.faces, radial=tube.radial, weights=w, tags=tags)


FOOT_COLUMNS = ["left_ankle", "left_foot"]


def build_arm(j: dict[str, np.ndarray], total: int, girth: float, reach: float) -> Part:
    """Left arm from the collar to ``reach`` beyond the wrist. Columns: spine3, collar, shoulder,
    elbow, wrist."""
    names = ["left_collar", "left_shoulder", "left_elbow", "left_wrist"]
    pts = [j[n] for n in names]
    pts.append(j["left_wrist"] + reach * (j["left_wrist"] - j["left_elbow"]) / np.linalg.norm(j["left_wrist"] - j["left_elbow"]))
    centers, parc = _polyline(pts, 0.018)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(centers, axis=0), axis=1))])
    upper = 0.5 * (parc[1] + parc[2])
    fore = parc[2] + 0.35 * (parc[3] - parc[2])
    key = [0.0, parc[1], upper, parc[2], fore, parc[3], parc[4]]
    rz = girth * np.interp(arc, key, [0.050, 0.055, 0.047, 0.038, 0.041, 0.026, 0.022])
    ry = girth * np.interp(arc, key, [0.050, 0.055, 0.047, 0.038, 0.037, 0.019, 0.016])
    tube = make_tube(centers, [0, 0, 1.0], np.stack([rz, ry], 1), total, True, True, 0.01)
    w = chain_weights(tube.arc, 0, [(0.02, 1, 0.03), (parc[1], 2, 0.04), (parc[2], 3, 0.035), (parc[3], 4, 0.02)], 5)
    tags = {"grp:arm_l": np.arange(len(tube.verts))}
    for k, n in enumerate(names[:3]):  # the wrist ring belongs to the hand
        tags[f"joint:{n}"] = tube.rings[int(np.argmin(np.abs(arc - parc[k])))]
    return Part(verts=tube.verts, faces=tube.faces, radial=tube.radial, weights=w, tags=tags)


ARM_COLUMNS = ["spine3", "left_collar", "left_shoulder", "left_elbow", "left_wrist"]


# ----------------------------------------------------------------------------------------------
# assembling pieces into a model's joint space
# ----------------------------------------------------------------------------------------------


def to_model_joints(part: Part, local_names: list[str], mapping: dict[str, str], model_joints: list[str]) -> Part:
    """Re-express a part's weights (columns ``local_names``) in ``model_joints``; ``mapping`` renames
    local joints (unmapped names keep theirs). Joint tags are renamed the same way."""
    index = {n: i for i, n in enumerate(model_joints)}
    cols = [index[mapping.get(n, n)] for n in local_names]
    w = np.zeros((part.num_verts, len(model_joints)))
    np.add.at(w.T, cols, part.weights.T)
    tags = {}
    for k, v in part.tags.items():
        if k.startswith("joint:"):
            k = "joint:" + mapping.get(k[6:], k[6:])
            if k in tags:  # several local joints folded into one model joint: keep the first ring
                continue
        tags[k] = v
    return Part(verts=part.verts, faces=part.faces, radial=part.radial, weights=w, tags=tags)


def swap_side(name: str) -> str:
    """'left_x' <-> 'right_x', 'L:' <-> 'R:', '_l' <-> '_r' suffixes."""
    for a, b in (("left", "right"), ("L:", "R:")):
        if a in name:
            return name.replace(a, b)
        if b in name:
            return name.replace(b, a)
    if name.endswith("_l"):
        return name[:-2] + "_r"
    if name.endswith("_r"):
        return name[:-2] + "_l"
    return name


def mirror(part: Part, joint_names: list[str] | None) -> Part:
    """Mirror image through x = 0 (faces re-oriented). With ``joint_names`` the weight columns and
    joint tags swap sides; without, they stay (MANO's left hand keeps MANO's joint order)."""
    flip = np.array([-1.0, 1.0, 1.0])
    w = part.weights
    if joint_names is not None:
        index = {n: i for i, n in enumerate(joint_names)}
        w = w[:, [index[swap_side(n)] for n in joint_names]]
    tags = {swap_side(k) if (joint_names is not None or not k.startswith("joint:")) else k: v for k, v in part.tags.items()}
    return Part(verts=part.verts * flip, faces=part.faces[:, [0, 2, 1]], radial=part.radial * flip, weights=w, tags=tags)


def ring_regressor(tags: dict[str, np.ndarray], joints: list[str], num_verts: int) -> np.ndarray:
    """Joint regressor [J, V]: joint j is the mean of the vertices tagged ``joint:<name>``."""
    reg = np.zeros((len(joints), num_verts))
    for k, name in enumerate(joints):
        idx = tags.get(f"joint:{name}")
        if idx is None:
            raise KeyError(f"no vertices tagged for joint {name!r}")
        reg[k, idx] = 1.0 / len(idx)
    return reg
