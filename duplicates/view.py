"""One picture, or two views of one object? Evidence from the verified map and the foreground.

Verification maps A onto B with a homography and compares pixels. That also aligns two renders
of one device seen from other angles (front-on and turned, same wallpaper): the screen is a
plane, the background is white and agrees anyway, so most pixels agree. What a copy keeps and
another view does not:

- The map, in real pixels, is a similarity: crops, resizes, padding and mirroring keep the
  aspect ratio; only a photographed screen adds a little perspective. A turned device is
  foreshortened: the map stretches one direction more than the other (``anisotropy``) or its
  local scale varies across the image (``perspective``).
- Agreement on the foreground alone. A flat background agrees for any two product shots; on the
  object itself (points that differ from the background in either image) a copy still agrees,
  while another view disagrees at the visible sides, edges and camera.
- Local-feature matches that the refined map explains within half a feature cell
  (``homography_inliers``): all of a copy, the screen plane only of another view.
"""

from __future__ import annotations

import numpy as np

# Appended to ``verify.EVIDENCE`` in this order.
VIEW_EVIDENCE = ("anisotropy", "perspective", "foreground_agreement", "homography_inliers")

_CORNERS = np.array([[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9], [0.5, 0.5]])


def jacobians(H: np.ndarray, points: np.ndarray) -> np.ndarray:
    """d(map)/d(point) of the homography ``H`` (unit coordinates) at each point: N x 2 x 2."""
    ph = np.hstack([points, np.ones((len(points), 1))])
    q = ph @ H.T
    w = q[:, 2:3]
    uv = q[:, :2] / w
    # d(uv)/dp = (A - uv h^T) / w, A the top-left 2 x 2 and h the perspective row.
    return (H[None, :2, :2] - uv[:, :, None] * H[None, 2:3, :2]) / w[:, :, None]


def map_distortion(
    H: np.ndarray, size_a: tuple[int, int], size_b: tuple[int, int], points: np.ndarray
) -> tuple[float, float]:
    """(anisotropy, perspective) of the map in real pixels over ``points`` of A's overlap.

    Unit coordinates squash each image to a square, so the map is converted to pixels first:
    a resize to another width keeps an isotropic map. ``anisotropy`` is the largest
    log(s1 / s2) of the Jacobian's singular values; ``perspective`` is the log range of its
    determinant (local area scale) across the points: 0 for any affine map.
    """
    if len(points) == 0:
        return 0.0, 0.0
    scale = np.diag([size_b[0], size_b[1]])[None] @ jacobians(H, points)
    J = scale @ np.diag([1.0 / size_a[0], 1.0 / size_a[1]])[None]
    sv = np.linalg.svd(J, compute_uv=False)
    aniso = float(np.log(sv[:, 0] / np.maximum(sv[:, 1], 1e-9)).max())
    det = np.abs(np.linalg.det(J))
    det = det[det > 1e-12]
    persp = float(np.log(det.max() / det.min())) if len(det) else 0.0
    return aniso, persp


def background(thumb: np.ndarray, width: int = 2) -> np.ndarray:
    """Median colour of a thumbnail's outer ring (``width`` pixels): the backdrop colour."""
    t = np.asarray(thumb, dtype=np.float32)
    ring = np.concatenate(
        [t[:width].reshape(-1, 3), t[-width:].reshape(-1, 3)]
        + [t[:, :width].reshape(-1, 3), t[:, -width:].reshape(-1, 3)]
    )
    return np.median(ring, axis=0)


def foreground_agreement(
    col_a: np.ndarray,
    col_b: np.ndarray,
    resid: np.ndarray,
    bg_a: np.ndarray,
    bg_b: np.ndarray,
    tol: float,
    min_share: float = 0.05,
) -> float:
    """Share of foreground points that agree (``resid`` <= tol).

    Foreground: the point differs from its image's background colour by more than ``2 tol`` in
    A or in B. With almost no foreground (a flat picture) all points count.
    """
    fg = (np.abs(col_a - bg_a).max(axis=1) > 2 * tol) | (np.abs(col_b - bg_b).max(axis=1) > 2 * tol)
    if fg.mean() < min_share:
        return float((resid <= tol).mean())
    return float((resid[fg] <= tol).mean())


def homography_inliers(H: np.ndarray, pa: np.ndarray, pb: np.ndarray, tol: float) -> float:
    """Share of matches (pa -> pb, unit coordinates) that the map ``H`` puts within ``tol``."""
    if len(pa) == 0:
        return 0.0
    q = np.hstack([pa, np.ones((len(pa), 1))]) @ H.T
    w = q[:, 2:3]
    ok = w[:, 0] > 1e-6
    err = np.linalg.norm(q[:, :2] / np.where(ok[:, None], w, 1.0) - pb, axis=1)
    return float((ok & (err <= tol)).mean())


def view_evidence(
    H: np.ndarray,
    sizes: tuple[tuple[int, int], tuple[int, int]] | None,
    pts: np.ndarray,
    col_a: np.ndarray,
    col_b: np.ndarray,
    resid: np.ndarray,
    backgrounds: tuple[np.ndarray, np.ndarray],
    matches: tuple[np.ndarray, np.ndarray],
    tol: float,
    match_tol: float,
) -> list[float]:
    """``VIEW_EVIDENCE`` of one aligned pair.

    ``pts`` are A's lattice points inside B, ``col_a`` and ``col_b`` the compared colours there,
    ``resid`` their residual after the colour fit, ``backgrounds`` the backdrop colours of A and
    B; ``matches`` the local-feature matches of the chosen orientation. ``sizes``: (width,
    height) of A and B; None treats both as square.
    """
    size_a, size_b = sizes or ((1, 1), (1, 1))
    # Distortion over the overlap's spread (its corners and centre), not single noisy cells.
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    probe = lo + _CORNERS * (hi - lo)
    aniso, persp = map_distortion(H, size_a, size_b, probe)
    fg = foreground_agreement(col_a, col_b, resid, *backgrounds, tol)
    return [aniso, persp, fg, homography_inliers(H, *matches, match_tol)]
