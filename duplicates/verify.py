"""Geometric and photometric verification of a candidate pair.

Global descriptors cannot tell a copy from another render of the same phone in another colour:
product shots on white share layout, wallpaper and outline. Verification asks what a person
would: can one image be mapped onto the other (crop, scale, padding, small tilt, mirror), and
once mapped, do the pixels agree up to one global colour change?

1. Match the CNN's local features (a stride-16 feature map) by mutual nearest neighbours.
2. Fit an affine map with RANSAC (vectorised over hypotheses) and keep plausible ones.
3. Warp a small thumbnail of one image onto the other, fit a per-channel gain and offset
   (brightness, contrast and tint edits), and score the share of overlapping pixels that agree.

Mirrored copies are handled by matching against the mirror's feature map and thumbnail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from duplicates.view import VIEW_EVIDENCE, background, view_evidence


@dataclass(frozen=True)
class VerifyConfig:
    """Verification settings (coordinates are in units of the image side, 0..1)."""

    match_min_sim: float = 0.4
    ransac_iters: int = 128
    inlier_tol: float = 0.06
    min_inliers: int = 12
    max_scale: float = 4.0
    max_anisotropy: float = 3.5
    max_rotation_deg: float = 20.0
    colour_tol: float = 16.0
    colour_model: str = "gain"
    min_overlap: float = 0.3
    grid: int = 40
    blur: float = 0.8  # Gaussian sigma in lattice steps before comparing
    shift_tolerance: float = 0.0  # lattice steps a point may match away (0.5 measured worse)
    refine_steps: int = 6
    refine_model: str = "homography"
    # Reject maps that stretch one direction this much more than the other in real pixels
    # (log of the ratio; 0.6 = 1.8x): no copy edit does, a device turned far aside does. On
    # benchmark seed 1 the most stretched true copy measured 0.58 (a thick border): a margin.
    max_view_anisotropy: float = 0.6
    seed: int = 0
    # Verify each pair both ways (A's map into B and B's into A) and keep the way that agrees
    # more. One way alone depends on which file is A: a 10 % crop scored 0.965 against its
    # original one way and 0.341 the other, so renaming files changed the groups found.
    # Calibrations stored before this read as False (stored_settings).
    both_ways: bool = True


def grid_points(h: int, w: int) -> np.ndarray:
    """Cell centres of an h x w feature map as (x, y) in 0..1, row-major like the map."""
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([(xs.ravel() + 0.5) / w, (ys.ravel() + 0.5) / h], axis=1)


def mutual_matches(fa: np.ndarray, fb: np.ndarray, min_sim: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ia, ib) of mutual nearest neighbours between unit-norm rows of fa and fb."""
    sims = fa @ fb.T
    best_b = sims.argmax(axis=1)
    best_a = sims.argmax(axis=0)
    ia = np.flatnonzero(best_a[best_b] == np.arange(len(fa)))
    ib = best_b[ia]
    keep = sims[ia, ib] >= min_sim
    return ia[keep], ib[keep]


def _plausible(linear: np.ndarray, config: VerifyConfig) -> np.ndarray:
    """Which 2x2 linear parts (K x 2 x 2) look like a crop/scale/pad/tilt, not a fold."""
    sv = np.linalg.svd(linear, compute_uv=False)
    det = np.linalg.det(linear)
    angle = np.degrees(
        np.abs(np.arctan2(linear[:, 1, 0] - linear[:, 0, 1], linear[:, 0, 0] + linear[:, 1, 1]))
    )
    return (
        (det > 0)
        & (sv[:, 0] <= config.max_scale)
        & (sv[:, 1] >= 1.0 / config.max_scale)
        & (sv[:, 0] <= config.max_anisotropy * np.maximum(sv[:, 1], 1e-9))
        & (angle <= config.max_rotation_deg)
    )


def ransac_affine(
    pa: np.ndarray, pb: np.ndarray, config: VerifyConfig, rng: np.random.Generator
) -> tuple[np.ndarray | None, np.ndarray]:
    """Affine map (3 x 2, applied as [x y 1] @ T) from pa to pb, and its inlier mask."""
    m = len(pa)
    none = np.zeros(m, dtype=bool)
    if m < max(3, config.min_inliers):
        return None, none
    ha = np.hstack([pa, np.ones((m, 1))])
    picks = rng.integers(0, m, size=(config.ransac_iters, 3))
    picks = picks[
        (picks[:, 0] != picks[:, 1]) & (picks[:, 1] != picks[:, 2]) & (picks[:, 0] != picks[:, 2])
    ]
    src, dst = ha[picks], pb[picks]  # K x 3 x 3, K x 3 x 2
    ok = np.abs(np.linalg.det(src)) > 1e-6
    if not ok.any():
        return None, none
    T = np.linalg.solve(src[ok], dst[ok])  # K x 3 x 2
    T = T[_plausible(np.transpose(T[:, :2, :], (0, 2, 1)), config)]
    if not len(T):
        return None, none
    err = np.linalg.norm(np.einsum("mi,kij->kmj", ha, T) - pb[None], axis=2)
    inliers = err <= config.inlier_tol
    best = int(inliers.sum(axis=1).argmax())
    mask = inliers[best]
    # Refit on all inliers, keep the refit only if it is still plausible and no worse.
    T_best = T[best]
    if mask.sum() >= 3:
        refit, *_ = np.linalg.lstsq(ha[mask], pb[mask], rcond=None)
        if _plausible(refit[:2].T[None], config)[0]:
            refit_mask = np.linalg.norm(ha @ refit - pb, axis=1) <= config.inlier_tol
            if refit_mask.sum() >= mask.sum():
                T_best, mask = refit, refit_mask
    return T_best, mask


def _sample(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of an H x W (x C) float image at pixel coordinates x, y (clamped)."""
    h, w = img.shape[:2]
    x = np.clip(x, 0, w - 1.001)
    y = np.clip(y, 0, h - 1.001)
    x0, y0 = np.floor(x).astype(np.intp), np.floor(y).astype(np.intp)
    fx, fy = x - x0, y - y0
    if img.ndim == 3:
        fx, fy = fx[:, None], fy[:, None]
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _blur(thumb: np.ndarray, sigma: float) -> np.ndarray:
    img = Image.fromarray(thumb)
    if sigma > 0.3:
        img = img.filter(ImageFilter.GaussianBlur(sigma))
    return np.asarray(img, dtype=np.float32)


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


_SATURATIONS = np.array([0.4, 0.55, 0.7, 0.85, 1.0, 1.2, 1.45, 1.75], dtype=np.float32)


def _gain_fit(a: np.ndarray, b: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Fitted values of b from a with a gain and offset per channel (gain in [0.4, 2.5])."""
    am, bm = a[keep].mean(axis=0), b[keep].mean(axis=0)
    ac, bc = a[keep] - am, b[keep] - bm
    var = (ac * ac).mean(axis=0)
    gain = np.clip((ac * bc).mean(axis=0) / np.maximum(var, 1.0), 0.4, 2.5)
    return np.where(var > 1.0, gain, 1.0) * (a - am) + bm


def _colour_fit(a: np.ndarray, b: np.ndarray, model: str = "gain", rounds: int = 2):
    """(B's colours predicted from A's, per-point residual) after fitting a global colour edit.

    ``gain``: a gain and offset per channel (brightness, contrast, tint). ``saturation``: the
    same after a saturation change (a blend with the luminance, tried over a range).
    ``affine``: a full 3x3 matrix plus offset. None of these can recolour one region (another
    colour of the phone) while keeping the rest; the more flexible ones also explain more of
    such differences, so ``gain`` is the default. The residual is the mean absolute difference
    over channels; later rounds refit without the worst 20% of points (text, tags, marks).
    """
    keep = np.ones(len(a), dtype=bool)
    ah = np.hstack([a, np.ones((len(a), 1), a.dtype)])
    lum = (a @ _LUMA)[:, None]
    fitted = a
    for _ in range(rounds):
        if model == "affine":
            coef, *_ = np.linalg.lstsq(ah[keep], b[keep], rcond=None)
            fitted = ah @ coef
        elif model == "saturation":
            best = None
            for sat in _SATURATIONS:
                pred = _gain_fit(lum + sat * (a - lum), b, keep)
                total = np.abs(b - pred)[keep].mean()
                if best is None or total < best[0]:
                    best = (total, pred)
            fitted = best[1]
        else:
            fitted = _gain_fit(a, b, keep)
        resid = np.abs(b - fitted).mean(axis=1)
        cut = (len(resid) - 1) * 4 // 5
        keep = resid <= np.partition(resid, cut)[cut]
    return fitted, resid


def _project(H: np.ndarray, ph: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points ``ph`` (N x 3, homogeneous) mapped by the 3x3 ``H``: (N x 2 points, N depths)."""
    q = ph @ H.T
    w = q[:, 2]
    return q[:, :2] / w[:, None], w


@dataclass(frozen=True)
class Aligned:
    """What ``compare_aligned`` compared: A's lattice points inside B and both colours there."""

    points: np.ndarray  # M x 2, A's unit coordinates
    colour_a: np.ndarray  # M x 3, blurred
    colour_b: np.ndarray  # M x 3, blurred, at the mapped points
    residual: np.ndarray  # M, after the global colour fit


def compare_aligned(
    thumb_a: np.ndarray, thumb_b: np.ndarray, T: np.ndarray, config: VerifyConfig
) -> tuple[float, float, np.ndarray, np.ndarray, Aligned | None]:
    """Refine the map from A's unit coordinates to B's photometrically, then compare pixels.

    Both square uint8 thumbnails are blurred to the same resolution on a ``grid`` x ``grid``
    lattice over A (B is blurred by the map's scale). The RANSAC affine map ``T`` (3 x 2) is
    refined by Gauss-Newton steps on luminance into a homography (``refine_model``), which
    also fits the perspective of a photographed screen; gain and offset are re-fitted each
    step and the steps are Huber-weighted so overlays do not pull. The score is the share of
    overlapping lattice points whose colour agrees within ``colour_tol`` after a global
    colour fit. Returns (agreement 0..1, overlap share of A, refined 3 x 3 map, residuals on
    the ``grid`` x ``grid`` lattice, NaN where A's point falls outside B, the compared points
    and colours or None when too few overlap).
    """
    n, sa, sb = config.grid, thumb_a.shape[0], thumb_b.shape[0]
    scale = float(np.sqrt(abs(np.linalg.det(T[:2])))) * sb / sa  # B pixels per A pixel
    step_a = sa / n  # lattice step in A pixels
    sigma_a = max(config.blur * step_a, 0.8 / max(scale, 1e-3))
    sigma_b = max(0.5, sigma_a * scale)
    blur_a, blur_b = _blur(thumb_a, sigma_a), _blur(thumb_b, sigma_b)
    pts = grid_points(n, n)
    ph = np.hstack([pts, np.ones((len(pts), 1))])
    col_a = _sample(blur_a, pts[:, 0] * sa - 0.5, pts[:, 1] * sa - 0.5)
    lum_a, lum_b = col_a @ _LUMA, blur_b @ _LUMA
    gy, gx = np.gradient(lum_b)
    maps_b = np.stack([lum_b, gx * sb, gy * sb], axis=2)  # one bilinear lookup per step
    H0 = H = np.vstack([np.asarray(T, np.float64).T, [0.0, 0.0, 1.0]])
    n_params = 8 if config.refine_model == "homography" else 6
    for _ in range(config.refine_steps):
        q, w = _project(H, ph)
        inside = (q >= 0).all(axis=1) & (q <= 1).all(axis=1) & (w > 0.2)
        if inside.sum() < 16:
            break
        q, w, p = q[inside], w[inside], ph[inside]
        yb, dx, dy = _sample(maps_b, q[:, 0] * sb - 0.5, q[:, 1] * sb - 0.5).T
        ya = lum_a[inside]
        A = np.stack([ya, np.ones_like(ya)], axis=1)
        coef, *_ = np.linalg.lstsq(A, yb, rcond=None)
        r = yb - A @ coef
        wt = np.minimum(1.0, 10.0 / np.maximum(np.abs(r), 1e-6))  # Huber at 10 grey levels
        pw = p / w[:, None]
        cols = [dx[:, None] * pw, dy[:, None] * pw]
        if n_params == 8:
            g = (dx * q[:, 0] + dy * q[:, 1])[:, None]
            cols.append(-g * pw[:, :2])
        J = np.hstack(cols)
        normal = (J * wt[:, None]).T @ J + 1e-3 * np.eye(n_params)
        delta = np.linalg.solve(normal, -(J * wt[:, None]).T @ r)
        H = H + np.append(delta, np.zeros(9 - n_params)).reshape(3, 3)
        if np.abs(delta).max() < 1e-4:
            break
    if not _plausible(H[None, :2, :2], config)[0] or np.abs(H[2, :2]).max() > 0.6:
        H = H0
    q, w = _project(H, ph)
    inside = (q >= 0).all(axis=1) & (q <= 1).all(axis=1) & (w > 0.2)
    overlap = float(inside.mean())
    lattice = np.full(n * n, np.nan, dtype=np.float32)
    if inside.sum() < 16:
        return 0.0, overlap, H, lattice.reshape(n, n), None
    col_b = _sample(blur_b, q[inside, 0] * sb - 0.5, q[inside, 1] * sb - 0.5)
    fitted, resid = _colour_fit(col_a[inside], col_b, config.colour_model)
    if config.shift_tolerance > 0:
        # A point also agrees if B matches it a fraction of a lattice step away: edges that
        # are a little blurred or misaligned do not count as differences, regions still do.
        d = config.shift_tolerance / n
        for ox, oy in ((d, 0), (-d, 0), (0, d), (0, -d)):
            qs, _ = _project(H, ph[inside] + np.array([ox, oy, 0.0]))
            shifted = _sample(blur_b, qs[:, 0] * sb - 0.5, qs[:, 1] * sb - 0.5)
            resid = np.minimum(resid, np.abs(shifted - fitted).mean(axis=1))
    lattice[inside] = resid
    aligned = Aligned(pts[inside], col_a[inside], col_b, resid)
    return float((resid <= config.colour_tol).mean()), overlap, H, lattice.reshape(n, n), aligned


# What verification measures about a pair, in this order; ``duplicates.pair_model`` turns
# these into the score (a calibrated classifier), or the agreement alone is the score.
EVIDENCE = (
    "agreement",  # share of overlapping lattice points whose colour agrees (colour_tol)
    "descriptor_cosine",  # global descriptor similarity
    "inliers",  # RANSAC inliers among the local-feature matches
    "inlier_ratio",  # inliers / mutual matches
    "agree_tight",  # agreement at half colour_tol: re-encoding and resizing keep it high
    "agree_loose",  # agreement at twice colour_tol: screen photos and blur keep it high
    "median_residual",
    "p90_residual",
    "largest_region",  # largest connected disagreeing region, share of the overlap
    "solid_share",  # disagreeing points left after a morphological opening, share of overlap
    *VIEW_EVIDENCE,  # another view of one object, not a copy (duplicates.view)
)


def disagreement_shape(lattice: np.ndarray, tol: float) -> tuple[float, float]:
    """(largest connected region, solid share) of the lattice points that disagree.

    A recoloured phone body or another camera module is one solid region; text, watermarks,
    screen moire and noise are thin or scattered and mostly vanish under an opening.
    """
    from scipy import ndimage

    inside = ~np.isnan(lattice)
    bad = inside & (np.nan_to_num(lattice, nan=0.0) > tol)
    total = max(1, int(inside.sum()))
    labels, count = ndimage.label(bad)
    largest = np.bincount(labels.ravel())[1:].max() / total if count else 0.0
    return float(largest), float(ndimage.binary_opening(bad).sum() / total)


def score_pair(
    local_a: np.ndarray,
    thumb_a: np.ndarray,
    local_b: np.ndarray,
    thumb_b: np.ndarray,
    grid: np.ndarray,
    config: VerifyConfig,
    rng: np.random.Generator,
    cosine: float = 0.0,
    sizes: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> np.ndarray | None:
    """The ``EVIDENCE`` vector of image A against B, or None when no plausible map exists.

    ``local_a`` is A's feature map (cells x C); ``local_b`` holds B's for the image and its
    mirror (2 x cells x C). The orientation with more RANSAC inliers is compared pixel-wise;
    ``cosine`` is the pair's global descriptor similarity, passed through as evidence;
    ``sizes`` are the (width, height) of A and B, for the map's distortion in real pixels.
    """
    fa = np.asarray(local_a, dtype=np.float32)
    best = None
    for mirrored in (False, True):
        ia, ib = mutual_matches(
            fa, np.asarray(local_b[int(mirrored)], np.float32), config.match_min_sim
        )
        T, mask = ransac_affine(grid[ia], grid[ib], config, rng)
        inliers = int(mask.sum())
        if T is not None and inliers >= config.min_inliers and (best is None or inliers > best[1]):
            best = (T, inliers, mirrored, len(ia), (grid[ia], grid[ib]))
    if best is None:
        return None
    T, inliers, mirrored, matches, matched = best
    tb = np.ascontiguousarray(thumb_b[:, ::-1]) if mirrored else thumb_b
    agree, overlap, T, lattice, aligned = compare_aligned(thumb_a, tb, T, config)
    # Share of B covered by A: A's overlap times the area scale of the map.
    covered_b = min(1.0, overlap * abs(float(np.linalg.det(T[:2, :2]))))
    resid = lattice[~np.isnan(lattice)]
    if max(overlap, covered_b) < config.min_overlap or aligned is None:
        return None
    tol = config.colour_tol
    largest, solid = disagreement_shape(lattice, tol)
    view = view_evidence(
        T,
        sizes,
        aligned.points,
        aligned.colour_a,
        aligned.colour_b,
        aligned.residual,
        (background(thumb_a), background(tb)),
        matched,
        tol,
        config.inlier_tol / 2,
    )
    if view[0] > config.max_view_anisotropy:
        return None
    return np.array(
        [
            agree,
            cosine,
            inliers,
            inliers / max(1, matches),
            (resid <= tol / 2).mean(),
            (resid <= tol * 2).mean(),
            np.median(resid),
            np.percentile(resid, 90),
            largest,
            solid,
            *view,
        ],
        dtype=np.float32,
    )
