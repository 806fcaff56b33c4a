"""Embedded procedural video dataset whose classes differ only in the ORDER of frames.

Four pairs of classes; the second class of each pair is exactly the first one played
backwards (clips of odd labels are rendered as their partner and reversed in time):

  0 moving_up     / 1 moving_down   one object translating vertically
  2 growing       / 3 shrinking     one object scaling about its centre
  4 fading_in     / 5 fading_out    one object's opacity rising / falling
  6 separating    / 7 converging    two copies moving apart / together horizontally

Every motion is symmetric about the middle frame and every nuisance (shape, colour,
orientation, position, speed, textured background, static distractor shapes, per-frame
pixel noise) is drawn independently of the direction, so the set of frames of a clip
says nothing about which class of its pair it is: a model that averages per-frame
features (C2D) is at chance within each pair, a temporal model is not. All pairs are
invariant under horizontal flips, so the usual flip augmentation keeps labels valid.

Clip k of a split depends only on (seed, split, k, label), so output is bit-identical
for a given seed whatever the sharding. Written as TFRecord SequenceExamples (one JPEG
per frame) readable by `pipelines.dataset.make_dataset`. The command line that writes it:
pipelines/synthetic/__main__.py (`python -m pipelines.synthetic --output_dir=/tmp/synthetic`).
"""

import json
import os

import numpy as np
import tensorflow as tf

from pipelines import files, tfrecord

CLASSES = (
    "moving_up",
    "moving_down",
    "growing",
    "shrinking",
    "fading_in",
    "fading_out",
    "separating",
    "converging",
)
NUM_FRAMES = 20
SIZE = 64
# Clips per split of the embedded dataset, as the demo trains and evaluates on it.
NUM_TRAIN = 1200
NUM_EVAL = 240
FPS = 25.0
JPEG_QUALITY = 90
_VERSION = 2  # bump when rendering changes: existing outputs are regenerated
_MARKER = "_COMPLETE.json"
_SPLITS = {"train": 0, "eval": 1}
_NUM_SHAPES = 5  # disk, square, triangle, diamond, cross
_CHUNK = 64  # clips rendered per vectorised batch (memory bound only)


def partner(label):
    """The class whose clips are the time-reversed clips of `label`."""
    return label ^ 1


def _uniform(rng, lo, hi):
    return lo + (hi - lo) * rng.random()


def _clip_params(rng, num_frames, size):
    """Per-clip parameters of the forward (even-label) version of every pair.

    Returns a dict of scalars/arrays; trajectories are (T,) arrays for each pair, so
    the random stream does not depend on the label.
    """
    k = size / SIZE
    t = np.arange(num_frames, dtype=np.float64)
    tc = t - (num_frames - 1) / 2
    frac = t / max(num_frames - 1, 1)
    p = {}
    p["shape"] = int(rng.integers(_NUM_SHAPES))
    p["angle"] = _uniform(rng, 0, 2 * np.pi)
    dark = rng.random() < 0.5
    bg = rng.random(3) * 0.35
    obj = 0.55 + rng.random(3) * 0.45
    p["bg"], p["color"] = (bg, obj) if dark else (1 - bg, 1 - obj)
    p["texture"] = (rng.random((3, 5, 5)) - 0.5) * 2 * _uniform(rng, 0.0, 0.1)
    num_distractors = int(rng.integers(3))
    p["distractors"] = [
        dict(
            shape=int(rng.integers(_NUM_SHAPES)),
            angle=_uniform(rng, 0, 2 * np.pi),
            color=rng.random(3),
            radius=_uniform(rng, 2, 4) * k,
            cx=_uniform(rng, 0, size),
            cy=_uniform(rng, 0, size),
        )
        for _ in range(num_distractors)
    ]
    p["noise"] = _uniform(rng, 0.0, 0.03)
    p["noise_seed"] = int(rng.integers(2**31))

    def margin(r):  # objects stay inside: a shape reaches 1.25 radius (+1 px edge)
        return 1.25 * r + 1

    # Pair 0: moving up (y decreases); total displacement 18..28 px at 64.
    radius = _uniform(rng, 7, 11) * k
    travel = _uniform(rng, 18, 28) * k / 2
    cy = _uniform(rng, margin(radius) + travel, size - margin(radius) - travel)
    move = dict(
        cx=np.full_like(t, _uniform(rng, margin(radius), size - margin(radius))),
        cy=cy - 2 * travel * tc / max(num_frames - 1, 1),
        radius=np.full_like(t, radius),
        alpha=np.ones_like(t),
        dx=None,
    )
    # Pair 1: growing by a total factor 2.5..3.5 about a fixed centre.
    radius = _uniform(rng, 7, 11) * k
    ratio = _uniform(rng, 2.5, 3.5)
    r_max = radius * np.sqrt(ratio)
    grow = dict(
        cx=np.full_like(t, _uniform(rng, margin(r_max), size - margin(r_max))),
        cy=np.full_like(t, _uniform(rng, margin(r_max), size - margin(r_max))),
        radius=radius * ratio ** (tc / max(num_frames - 1, 1)),
        alpha=np.ones_like(t),
        dx=None,
    )
    # Pair 2: fading in, opacity lo -> hi linearly.
    radius = _uniform(rng, 7, 11) * k
    lo, hi = _uniform(rng, 0.0, 0.2), _uniform(rng, 0.8, 1.0)
    fade = dict(
        cx=np.full_like(t, _uniform(rng, margin(radius), size - margin(radius))),
        cy=np.full_like(t, _uniform(rng, margin(radius), size - margin(radius))),
        radius=np.full_like(t, radius),
        alpha=lo + (hi - lo) * frac,
        dx=None,
    )
    # Pair 3: two copies at cx +- d, d growing by `change` over the clip.
    radius = _uniform(rng, 5, 8) * k
    change = _uniform(rng, 7, 11) * k
    d_lo = 0.9 * radius + change / 2
    d_hi = max(d_lo, size / 2 - margin(radius) - change / 2)
    d_mid = _uniform(rng, d_lo, d_hi)
    split = dict(
        cx=np.full_like(t, size / 2 + _uniform(rng, -1, 1) * (d_hi - d_mid)),
        cy=np.full_like(t, _uniform(rng, margin(radius), size - margin(radius))),
        radius=np.full_like(t, radius),
        alpha=np.ones_like(t),
        dx=d_mid + change * tc / max(num_frames - 1, 1),
    )
    p["pairs"] = (move, grow, fade, split)
    return p


def _gauge(shape, u, v):
    """Shape 'norm' of local coordinates: <= 1 inside the unit shape."""
    if shape == 0:  # disk
        return np.sqrt(u * u + v * v)
    if shape == 1:  # square
        return np.maximum(np.abs(u), np.abs(v)) / 0.85
    if shape == 2:  # triangle, inradius 0.55
        angles = np.deg2rad([90.0, 210.0, 330.0])
        return np.max(np.stack([float(np.cos(a)) * u + float(np.sin(a)) * v for a in angles]), 0) / 0.55
    if shape == 3:  # diamond
        return (np.abs(u) + np.abs(v)) / 1.15
    au, av = np.abs(u), np.abs(v)  # cross
    return np.minimum(np.maximum(au / 0.35, av), np.maximum(av / 0.35, au))


def _mask(shape, angle, cx, cy, radius, grid_x, grid_y):
    """Anti-aliased coverage of a shape; cx/cy/radius broadcast against the grid."""
    dx, dy = grid_x - cx, grid_y - cy
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u = (c * dx + s * dy) / radius
    v = (-s * dx + c * dy) / radius
    return np.clip((1.0 - _gauge(shape, u, v)) * radius + 0.5, 0.0, 1.0, dtype=np.float32)


def _upsample_matrix(n_in, n_out):
    """Linear interpolation matrix (n_out, n_in), corners aligned."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    w = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] = 1 - w
    m[np.arange(n_out), lo + 1] = w
    return m


def _render(p, pair, num_frames, size, clutter):
    """Forward clip of `pair` as float32 (T, H, W, 3) in [0, 1]."""
    grid_y, grid_x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    background = np.broadcast_to(p["bg"].astype(np.float32), (size, size, 3)).copy()
    if clutter:
        up = _upsample_matrix(5, size).astype(np.float32)
        background += np.transpose(up @ p["texture"].astype(np.float32) @ up.T, (1, 2, 0))
        for d in p["distractors"]:
            m = _mask(d["shape"], d["angle"], d["cx"], d["cy"], d["radius"], grid_x, grid_y)
            background += m[..., None] * (d["color"].astype(np.float32) - background)
    traj = {k: None if v is None else v.astype(np.float32) for k, v in p["pairs"][pair].items()}

    def col(a):  # (T,) -> (T, 1, 1)
        return a[:, None, None]

    gx, gy = grid_x[None], grid_y[None]
    if traj["dx"] is None:
        m = _mask(p["shape"], p["angle"], col(traj["cx"]), col(traj["cy"]), col(traj["radius"]), gx, gy)
    else:
        m = np.maximum(
            _mask(
                p["shape"],
                p["angle"],
                col(traj["cx"] - traj["dx"]),
                col(traj["cy"]),
                col(traj["radius"]),
                gx,
                gy,
            ),
            _mask(
                p["shape"],
                p["angle"],
                col(traj["cx"] + traj["dx"]),
                col(traj["cy"]),
                col(traj["radius"]),
                gx,
                gy,
            ),
        )
    m = (m * col(traj["alpha"]))[..., None]
    frames = background[None] + m * (p["color"].astype(np.float32) - background[None])
    if clutter and p["noise"] > 0:
        noise = np.random.default_rng(p["noise_seed"]).standard_normal(frames.shape, dtype=np.float32)
        frames += np.float32(p["noise"]) * noise
    return frames


def generate_clips(labels, seed=0, num_frames=NUM_FRAMES, size=SIZE, clutter=True, stream=0, first_index=0):
    """Renders clips of the given labels.

    Args:
      labels: int sequence of class indices (see CLASSES).
      seed, stream: clip i is drawn from np.random.default_rng([seed, stream,
        first_index + i]) (stream separates splits); its content depends only on
        these and the label's pair, so labels 2p and 2p+1 give time-reversed clips.
      num_frames, size: clip length and square frame side.
      clutter: False renders a flat background with no distractors and no noise.

    Returns:
      uint8 (len(labels), num_frames, size, size, 3).
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise ValueError(f"labels must be in [0, {len(CLASSES)}). Received: labels={labels}")
    if num_frames < 2 or size < 16:
        raise ValueError(
            f"Need num_frames >= 2 and size >= 16. Received: num_frames={num_frames}, size={size}"
        )
    out = np.empty((labels.size, num_frames, size, size, 3), np.uint8)
    for i, label in enumerate(labels):
        rng = np.random.default_rng([seed, stream, first_index + i])
        p = _clip_params(rng, num_frames, size)
        frames = _render(p, int(label) // 2, num_frames, size, clutter)
        clip = np.clip(np.round(frames * 255), 0, 255).astype(np.uint8)
        out[i] = clip[::-1] if label % 2 else clip
    return out


def split_labels(num, seed, stream):
    """Balanced labels of a split (i % num_classes, shuffled), int64 (num,)."""
    rng = np.random.default_rng([seed, stream, 2**31])
    return rng.permutation(np.arange(num) % len(CLASSES))


def _encode_jpegs(frames):
    """uint8 (N, H, W, 3) -> list of JPEG bytes."""
    # Eager per-frame calls beat tf.map_fn here (small frames, no graph overhead).
    return [tf.io.encode_jpeg(f, quality=JPEG_QUALITY).numpy() for f in frames]


def _write_split(output_dir, prefix, num, seed, num_frames, size, num_shards):
    stream = _SPLITS[prefix]
    labels = split_labels(num, seed, stream)
    bounds = np.linspace(0, num, num_shards + 1).astype(int)
    names = []
    for shard in range(num_shards):
        name = tfrecord.shard_name(prefix, shard, num_shards)
        with files.atomic_path(os.path.join(output_dir, name)) as tmp, tf.io.TFRecordWriter(tmp) as writer:
            for start in range(bounds[shard], bounds[shard + 1], _CHUNK):
                stop = min(start + _CHUNK, bounds[shard + 1])
                clips = generate_clips(
                    labels[start:stop], seed, num_frames, size, stream=stream, first_index=start
                )
                jpegs = _encode_jpegs(clips.reshape(-1, size, size, 3))
                for j in range(stop - start):
                    index = start + j
                    label = int(labels[index])
                    writer.write(
                        tfrecord.make_sequence_example(
                            jpegs[j * num_frames : (j + 1) * num_frames],
                            label,
                            CLASSES[label],
                            f"synthetic-{prefix}-{index:06d}",
                            FPS,
                            size,
                            size,
                        ).SerializeToString()
                    )
        names.append(name)
    return names


def write_synthetic(
    output_dir, num_train=NUM_TRAIN, num_eval=NUM_EVAL, seed=0, num_frames=NUM_FRAMES, size=SIZE, num_shards=4
):
    """Writes the dataset as TFRecords unless `output_dir` already holds it.

    Writes `train-{i:05d}-of-{n:05d}.tfrecord` (num_shards shards),
    `eval-00000-of-00001.tfrecord`, `classes.txt` (one name per line) and a
    completion marker recording the arguments. Shards are written to temporary names
    and renamed; the marker comes last, so an interrupted run is redone, and a run
    with the same arguments over a complete output writes nothing. Stale shards of
    other arguments are deleted.

    Returns:
      (train_pattern, eval_pattern) globs matching exactly the shards written.
    """
    for name, value, low in (
        ("num_train", num_train, 1),
        ("num_eval", num_eval, 1),
        ("num_frames", num_frames, 2),
        ("size", size, 16),
        ("num_shards", num_shards, 1),
    ):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low}. Received: {name}={value!r}")
    if num_shards > num_train:
        raise ValueError(
            f"num_shards must be <= num_train. Received: num_shards={num_shards}, num_train={num_train}"
        )
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    config = dict(
        version=_VERSION,
        num_train=int(num_train),
        num_eval=int(num_eval),
        seed=int(seed),
        num_frames=int(num_frames),
        size=int(size),
        num_shards=int(num_shards),
        jpeg_quality=JPEG_QUALITY,
    )
    train_names = [tfrecord.shard_name("train", i, num_shards) for i in range(num_shards)]
    eval_names = [tfrecord.shard_name("eval", 0, 1)]
    patterns = (
        os.path.join(output_dir, f"train-*-of-{num_shards:05d}.tfrecord"),
        os.path.join(output_dir, "eval-*-of-00001.tfrecord"),
    )
    marker = os.path.join(output_dir, _MARKER)
    wanted = train_names + eval_names + ["classes.txt"]
    if os.path.exists(marker):
        with open(marker) as f:
            try:
                done = json.load(f)
            except ValueError:
                done = None
        if done == config and all(os.path.exists(os.path.join(output_dir, n)) for n in wanted):
            return patterns
        os.remove(marker)
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name.startswith(("train-", "eval-")) and name.endswith(".tfrecord") and name not in wanted:
            os.remove(path)  # a shard of other arguments
    files.remove_stale_tmp(output_dir, hidden_only=True)  # left by a crashed run
    _write_split(output_dir, "train", num_train, seed, num_frames, size, num_shards)
    _write_split(output_dir, "eval", num_eval, seed, num_frames, size, 1)
    files.write_atomic(os.path.join(output_dir, "classes.txt"), "\n".join(CLASSES) + "\n")
    files.write_atomic(marker, json.dumps(config, sort_keys=True))
    return patterns
