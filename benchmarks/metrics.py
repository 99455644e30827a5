"""Quality metrics: J (IoU), DAVIS boundary F, PSNR, SSIM, flicker and detail.

J and F follow the DAVIS toolkit (davis2017-evaluation ``metrics.py``): F compares
one-pixel boundary maps (``seg2bmap``) matched within a tolerance of
``ceil(0.008 * image diagonal)`` pixels, with a disk structuring element; the dilation
is done with OpenCV instead of scikit-image.  SSIM is the Gaussian-window SSIM of
Wang et al. 2004 as scikit-image computes it with ``gaussian_weights=True``
(sigma 1.5, 11x11 window, K1 0.01, K2 0.03, population covariance, reflected borders,
the 5-pixel border cropped before averaging; colour images: mean over channels).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from unseen.engine.synthetic import PSNR_CAP, iou, psnr  # noqa: F401 - re-exported for the suites

# PSNR and IoU (the DAVIS J) are the engine's own, so the demo, the tests and the benchmarks agree.
jaccard = iou


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a binary mask (DAVIS ``_seg2bmap`` at the mask's size)."""
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: int) -> np.ndarray:
    """scikit-image's ``disk(radius)``: pixels with x^2 + y^2 <= radius^2."""
    r = int(radius)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return ((xx * xx + yy * yy) <= r * r).astype(np.uint8)


def boundary_tolerance(shape: tuple[int, int], bound_th: float = 0.008) -> int:
    return int(bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def f_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """DAVIS boundary F-measure of ``pred`` against ``gt``."""
    bound_pix = boundary_tolerance(gt.shape[:2], bound_th)
    fg_b = seg2bmap(pred)
    gt_b = seg2bmap(gt)
    kernel = disk(bound_pix)
    fg_dil = cv2.dilate(fg_b.astype(np.uint8), kernel).astype(bool)
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel).astype(bool)
    n_fg, n_gt = int(fg_b.sum()), int(gt_b.sum())
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = float((fg_b & gt_dil).sum()) / n_fg
        recall = float((gt_b & fg_dil).sum()) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def _ssim_map(a: np.ndarray, b: np.ndarray, sigma: float = 1.5, data_range: float = 255.0) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    radius = int(3.5 * sigma + 0.5)
    win = 2 * radius + 1
    blur = lambda x: cv2.GaussianBlur(x, (win, win), sigma, borderType=cv2.BORDER_REFLECT)  # noqa: E731
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ux, uy = blur(a), blur(b)
    vx = blur(a * a) - ux * ux
    vy = blur(b * b) - uy * uy
    vxy = blur(a * b) - ux * uy
    num = (2 * ux * uy + c1) * (2 * vxy + c2)
    den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    return num / den


def ssim(a: np.ndarray, b: np.ndarray, region: np.ndarray | None = None) -> float:
    """Gaussian SSIM of two uint8 images (gray or RGB).

    Whole image: the map's mean without its 5-pixel border (as scikit-image).  With a
    ``region``: the map's mean over the region's pixels (no border crop).
    """
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    channels = [(a, b)] if a.ndim == 2 else [(a[..., c], b[..., c]) for c in range(a.shape[2])]
    values = []
    for x, y in channels:
        m = _ssim_map(x, y)
        if region is not None:
            r = region.astype(bool)
            values.append(float(m[r].mean()) if r.any() else float("nan"))
        else:
            pad = 5
            values.append(float(m[pad:-pad, pad:-pad].mean()) if min(m.shape) > 2 * pad else float(m.mean()))
    return float(np.mean(values))


def flicker(frames: list[np.ndarray], regions: list[np.ndarray]) -> float:
    """Mean absolute frame-to-frame change (0-255) inside the region (union of t-1 and t)."""
    values = []
    for t in range(1, len(frames)):
        r = regions[t].astype(bool) | regions[t - 1].astype(bool)
        if not r.any():
            continue
        d = np.abs(frames[t].astype(np.int16) - frames[t - 1].astype(np.int16))
        values.append(float(d[r].mean()))
    return float(np.mean(values)) if values else float("nan")


def gradient_energy(image: np.ndarray, region: np.ndarray | None = None) -> float:
    """Mean Sobel gradient magnitude of the grey image (inside ``region`` if given)."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) if image.ndim == 3 else image.astype(np.float32)
    magnitude = cv2.magnitude(cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3))
    values = magnitude if region is None else magnitude[region.astype(bool)]
    return float(values.mean()) if values.size else float("nan")


def detail(output: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    """How much detail a fill keeps: gradient energy inside ``region``, output over ground truth (1: as
    detailed as the truth; under 1: smoother, a smear; over 1: busier).  PSNR and SSIM prefer a blur to
    a sharp fill that is not exactly the truth; this says which of the two a fill is."""
    reference = gradient_energy(truth, region)
    return gradient_energy(output, region) / reference if reference > 0 else float("nan")


def mean(values) -> float:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(vals)) if vals else float("nan")
