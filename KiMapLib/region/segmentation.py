"""Classical multi-sequence brain-tumour segmentation (no learning, no downloads).

Input: skull-stripped, coregistered MRI (any of t1, t1c, t2, flair) on one grid, arrays z,y,x in LPS axis order
(axis 2 runs right to left: the left-right mirror is along the last axis), background 0, a brain foreground.

Method: robust z-scores of every sequence against normal-appearing brain; a hyperintensity score from FLAIR/T2
(CSF, T2-bright but FLAIR-dark, is suppressed by the FLAIR/T2 minimum; with T2 alone, CSF-bright voxels and a
partial-volume rim are suppressed); left-right asymmetry about an estimated mid-sagittal plane; seeds =
hyperintense *and* asymmetric voxels away from the brain surface, ranked by evidence; hysteresis growth;
enhancement = (t1c - t1) or t1c z that is asymmetric and adjacent to the lesion, plus weaker ring walls (label 3);
necrotic core = the whole t1c-dark, fluid-like cavity next to the enhancement and what the ring encloses (label 1);
the rest oedema / non-enhancing (label 2). Labels follow BraTS: 1 necrotic core, 2 oedema / non-enhancing,
3 enhancing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

SEQUENCES = ("t1", "t1c", "t2", "flair")
#: How the problem reported when neither FLAIR nor T2 was given begins (the caller may accept it on request).
T1C_ONLY_PROBLEM = "only t1c"

DEFAULTS: dict[str, float] = {
    "z_outlier": 3.0,  # |z| above which voxels are excluded from the normal-brain statistics
    "z_iterations": 3,  # iterations of the outlier exclusion
    "smooth_mm": 1.0,  # Gaussian sigma of the intensity score
    "asym_smooth_mm": 2.0,  # Gaussian sigma applied before the mirror comparison
    "midline_search_mm": 16.0,  # +- search range of the mid-sagittal plane
    "rim_mm": 5.0,  # brain-surface rim excluded from seeds
    "seed_z": 2.5,  # seed: hyperintensity score above
    "seed_asym": 4.0,  # seed: (score - mirrored score) / its brain MAD above
    "grow_z": 1.0,  # growth (hysteresis) score above
    "grow_asym": 1.5,  # growth: normalised asymmetry above
    "min_seed_ml": 0.3,  # seed components smaller than this are ignored
    "keep_fraction": 0.3,  # keep components with evidence >= this fraction of the best one
    "enh_z": 3.0,  # enhancement z (t1c-t1 difference or t1c) above
    "enh_asym": 1.5,  # enhancement minus mirrored enhancement above
    "enh_grow_z": 2.0,  # enhancement hysteresis: grow into enhancement z above
    "enh_t1c_z": 1.0,  # enhancement: t1c itself z above (not just dark t1)
    "enh_adjacent_mm": 4.0,  # enhancement counts as adjacent within this distance of the FLAIR/T2 lesion
    "enh_near_fraction": 0.5,  # enhancing component kept when this fraction is adjacent
    "min_enh_ml": 0.2,  # enhancing components smaller than this are dropped (vessels)
    "open_mm": 1.5,  # opening radius of seeds and growth mask (cuts thin sulcal CSF)
    "fluid_t2_z": 7.0,  # T2 without FLAIR: T2 z above this is CSF-like fluid, suppressed with a rim of
    "fluid_rim_mm": 2.0,
    "core_t1c_z": -1.0,  # cavity / necrotic core: t1c z below this and below the lesion's median minus ...
    "core_t1c_drop": 1.0,  # ... this, and ...
    "core_t2_z": 2.0,  # ... t2 z above, or
    "core_mismatch_z": 3.0,  # ... t2 z minus FLAIR z above (partially suppressed fluid), and
    "core_flair_z": -1.5,  # ... FLAIR not suppressed like CSF (z above)
    "core_search_mm": 30.0,  # cavity components are looked for within this margin around the tumour
    "core_touch_mm": 3.0,  # cavity component becomes necrotic core when within this distance of enhancement
    "wall_mm": 4.0,  # thin ring walls: shell of the necrotic core in which voxels connected to the enhancement ...
    "wall_enh_z": 0.5,  # ... with enhancement z above and
    "wall_t1c_z": 0.0,  # ... t1c z above count as enhancing
    "core_enclosed": 0.3,  # fluid component joins the tumour when this fraction of its shell is tumour
    "close_mm": 3.0,  # closing radius of the enhancing rim before hole filling (necrosis)
    "min_volume_ml": 1.0,  # plausibility: whole tumour at least
    "max_volume_ml": 400.0,  # plausibility: whole tumour at most
    "max_brain_fraction": 0.3,  # plausibility: whole tumour at most this fraction of the brain
    "max_rim_fraction": 0.5,  # plausibility: fraction of the tumour on the brain-surface rim at most
    "max_mirror_dice": 0.4,  # plausibility: Dice of the tumour with its mirror image at most
    "min_asymmetry": 2.5,  # plausibility: mean normalised asymmetry inside the tumour at least
    "min_midline_corr": 0.5,  # plausibility: mirrored correlation at the mid-sagittal plane at least
}


@dataclass
class Segmentation:
    """Result: BraTS labels (uint8 z,y,x), QC numbers, method + parameters, plausibility problems."""

    labels: np.ndarray
    qc: dict = field(default_factory=dict)
    method: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def robust_z(img: np.ndarray, mask: np.ndarray, outlier: float = 3.0, iterations: int = 3) -> np.ndarray:
    """Z-score against normal-appearing brain: median/MAD of the mask, iteratively excluding |z| > outlier."""
    vals = img[mask].astype(np.float64)
    sel = vals[:: max(1, vals.size // 200000)]  # the statistics from a subsample (fast, plenty)
    for _ in range(max(1, int(iterations))):
        med = float(np.median(sel))
        mad = 1.4826 * float(np.median(np.abs(sel - med))) or float(np.std(sel)) or 1.0
        sel = sel[np.abs(sel - med) <= outlier * mad]
    z = np.zeros(img.shape, np.float32)
    z[mask] = (vals - med) / mad
    return z


def _ball(radius_mm: float, spacing_zyx: np.ndarray) -> np.ndarray:
    """Ellipsoidal structuring element of a radius in mm on an anisotropic grid."""
    r = np.maximum(np.floor(radius_mm / spacing_zyx + 1e-6), 0).astype(int)
    g = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    return sum((gi * s / radius_mm) ** 2 for gi, s in zip(g, spacing_zyx, strict=True)) <= 1.0


def _box(mask: np.ndarray, margin: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of a mask plus a margin (voxels per axis)."""
    idx = np.nonzero(mask)
    return tuple(
        slice(max(0, int(i.min()) - m), min(n, int(i.max()) + m + 1))
        for i, m, n in zip(idx, margin, mask.shape, strict=True)
    )


def _dilate(mask: np.ndarray, mm: float, sp: np.ndarray) -> np.ndarray:
    """Dilation by a ball of radius mm (Euclidean distance, computed on the mask's bounding box + margin)."""
    out = np.zeros(mask.shape, bool)
    if not mask.any():
        return out
    box = _box(mask, np.ceil(mm / sp).astype(int) + 1)
    out[box] = ndi.distance_transform_edt(~mask[box], sampling=sp) <= mm
    return out


def _erode(mask: np.ndarray, mm: float, sp: np.ndarray, step: int = 1) -> np.ndarray:
    """Erosion by a ball of radius mm (on the bounding box + 1; on every step-th voxel for a coarse, fast one)."""
    out = np.zeros(mask.shape, bool)
    if not mask.any():
        return out
    box = _box(mask, np.ones(3, int))
    m = np.pad(mask[box][::step, ::step, ::step], 1)  # outside the array is background on every side
    d = ndi.distance_transform_edt(m, sampling=sp * step)[1:-1, 1:-1, 1:-1] > mm
    for ax in range(3):
        d = np.repeat(d, step, axis=ax)
    out[box] = d[tuple(slice(0, n) for n in out[box].shape)] & mask[box]
    return out


def _mirror(a: np.ndarray, shift: int) -> np.ndarray:
    """Mirror along x about the plane x = (W - 1 + shift) / 2: out[..., x] = a[..., W - 1 + shift - x]."""
    return np.roll(a[..., ::-1], shift, axis=2)


def estimate_midline(z: np.ndarray, mask: np.ndarray, search_vox: int) -> tuple[int, float]:
    """Mirror shift maximising the correlation of an image with its left-right mirror (subsampled)."""
    a = np.where(mask, np.clip(z, -4, 4) + 5, 0)[::2, ::2].astype(np.float32)  # brain outline counts too
    a -= a.mean()
    norm = float((a * a).sum()) or 1.0
    w = a.shape[2]
    xs = np.nonzero(mask.any(axis=(0, 1)))[0]
    centre = round(xs[0] + xs[-1] - (w - 1))  # shift of the bounding-box centre
    best = (centre, -1.0)
    for s in range(centre - search_vox, centre + search_vox + 1):
        c = float((a * _mirror(a, s)).sum()) / norm
        if c > best[1]:
            best = (s, c)
    return best


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    return ndi.label(mask, structure=np.ones((3, 3, 3), bool))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes in 3D and slice-wise along all three axes (on the mask's bounding box)."""
    out = mask.copy()
    if not mask.any():
        return out
    box = _box(mask, np.ones(3, int))
    m = mask[box]
    f = ndi.binary_fill_holes(m)
    for ax in range(3):  # one labelling per axis with in-plane connectivity = every slice at once
        st = np.zeros((3, 3, 3), bool)
        st[tuple(1 if a == ax else slice(None) for a in range(3))] = ndi.generate_binary_structure(2, 1)
        lab, _ = ndi.label(~m, st)
        edge = np.zeros(m.shape, bool)
        for a in range(3):
            if a != ax:
                edge[tuple(slice(None) if b != a else [0, -1] for b in range(3))] = True
        f |= ~np.isin(lab, np.unique(lab[edge]))
    out[box] = f
    return out


def _means(values: np.ndarray, lab: np.ndarray, n: int) -> np.ndarray:
    """Mean of values in components 1..n (bincount: faster than ndimage.mean)."""
    count = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    return np.bincount(lab.ravel(), values.ravel().astype(np.float64), minlength=n + 1)[1:] / np.maximum(count, 1)


def segment_tumour(
    images: dict[str, np.ndarray],
    spacing: tuple[float, float, float],
    foreground: np.ndarray | None = None,
    params: dict[str, float] | None = None,
) -> Segmentation:
    """Segment a brain tumour into BraTS labels; arrays z,y,x in LPS axis order, spacing (x, y, z) mm."""
    p = {**DEFAULTS, **(params or {})}
    seqs = [s for s in SEQUENCES if s in images]
    if not seqs:
        raise ValueError(f"no known sequence among {sorted(images)}; expected some of {SEQUENCES}")
    full_shape = images[seqs[0]].shape
    sp = np.asarray(spacing, float)[::-1]  # z, y, x
    vox_ml = float(np.prod(sp)) / 1000.0
    fg = np.ones(full_shape, bool) if foreground is None else foreground.astype(bool)
    if foreground is None:
        for s in seqs:
            fg &= images[s] != 0
    search = round(p["midline_search_mm"] / sp[2])
    if not fg.any():
        raise ValueError("empty foreground")
    # crop to the brain (x margin covers the mirror search) for speed
    box = []
    for ax, m in zip(range(3), (2, 2, search + 2), strict=True):
        idx = np.nonzero(fg.any(axis=tuple(a for a in range(3) if a != ax)))[0]
        box.append(slice(max(0, idx[0] - m), min(full_shape[ax], idx[-1] + m + 1)))
    box_t = tuple(box)
    fg = ndi.binary_fill_holes(fg[box_t])
    shape = fg.shape
    problems: list[str] = []
    method = {"name": "kimap-classical-asymmetry-v2", "sequences": seqs, **p}

    z = {
        s: robust_z(np.asarray(images[s][box_t], np.float32), fg, p["z_outlier"], int(p["z_iterations"])) for s in seqs
    }
    sig = p["smooth_mm"] / sp
    zs = {s: ndi.gaussian_filter(z[s], sig) for s in seqs}

    # hyperintensity score: FLAIR and T2 jointly (min suppresses CSF), else whichever is there
    if "flair" in zs and "t2" in zs:
        score, score_from = np.minimum(zs["flair"], zs["t2"]), "min(flair, t2)"
    elif "flair" in zs:
        score, score_from = zs["flair"].copy(), "flair"
    elif "t2" in zs:  # no FLAIR: suppress CSF ourselves (fluid-bright voxels and their partial-volume rim)
        fluid_t2 = _dilate(z["t2"] > p["fluid_t2_z"], p["fluid_rim_mm"], sp)
        score, score_from = np.where(fluid_t2, -1.0, zs["t2"]).astype(np.float32), "t2 (fluid suppressed)"
    else:
        score, score_from = np.zeros(shape, np.float32), "none"
    score[~fg] = 0
    enh, enh_from = None, "none"
    if "t1c" in z:
        enh = zs["t1c"] - zs["t1"] if "t1" in z else zs["t1c"].copy()
        enh_from = "t1c - t1" if "t1" in z else "t1c"
        enh[~fg] = 0

    # mid-sagittal plane
    ref = "flair" if "flair" in z else ("t2" if "t2" in z else seqs[0])
    shift, mid_corr = estimate_midline(zs[ref], fg, search)
    asig = p["asym_smooth_mm"] / sp

    def asym(a: np.ndarray) -> np.ndarray:
        b = ndi.gaussian_filter(a, asig)
        return b - _mirror(b, shift)

    inner = _erode(fg, p["rim_mm"], sp, step=2)
    lesion = np.zeros(shape, bool)
    a_score = asym(score)
    mad = 1.4826 * float(np.median(np.abs(a_score[fg]))) or 1.0
    a_score /= mad  # asymmetry in units of its own robust spread over the brain
    if score_from != "none":
        seeds = (score > p["seed_z"]) & (a_score > p["seed_asym"]) & inner
        seeds = ndi.binary_opening(seeds, _ball(p["open_mm"], sp))
        lab, n = _components(seeds)
        best: list[tuple[float, int]] = []
        if n:
            idx = np.arange(1, n + 1)
            vol = np.bincount(lab.ravel(), minlength=n + 1)[1:] * vox_ml
            ev = _means(a_score, lab, n) * _means(score, lab, n) * np.cbrt(vol)
            best = [(float(e), int(i)) for e, i, v in zip(ev, idx, vol, strict=True) if v >= p["min_seed_ml"]]
        if best:
            top = max(e for e, _ in best)
            seed = np.isin(lab, [i for e, i in best if e >= p["keep_fraction"] * top])
            grow = (score > p["grow_z"]) & (a_score > p["grow_asym"]) & fg
            grow = ndi.binary_opening(grow, _ball(p["open_mm"], sp)) | seed
            glab, _ = _components(grow)
            lesion = np.isin(glab, np.unique(glab[seed]))
            lesion = _fill_holes(_erode(_dilate(lesion, 1.5, sp), 1.5, sp)) & fg

    # enhancement (label 3): hysteresis on the enhancement map, asymmetric seeds, mostly near the lesion
    enhancing = np.zeros(shape, bool)
    enh_candidate_ml = enh_adjacent_ml = 0.0
    enh_far = False
    if enh is not None:
        bright = zs["t1c"] > p["enh_t1c_z"]
        strong = (enh > p["enh_z"]) & (asym(enh) > p["enh_asym"]) & bright & inner
        lab, n = _components((enh > p["enh_grow_z"]) & bright & fg)
        cand = np.isin(lab, np.unique(lab[strong])) & (lab > 0)
        slab, ns = _components(strong)
        svol = np.bincount(slab.ravel(), minlength=ns + 1)[1:] * vox_ml
        lab, n = _components(cand)
        if n:
            idx = np.arange(1, n + 1)
            vol = np.bincount(lab.ravel(), minlength=n + 1)[1:] * vox_ml
            cand = np.isin(lab, idx[vol >= p["min_enh_ml"]])
            enh_candidate_ml = float(cand.sum() * vox_ml)
            if score_from == "none":
                enhancing = cand
            elif lesion.any():
                near = _dilate(lesion, p["enh_adjacent_mm"], sp)
                frac = _means(near, lab, n)
                enhancing = cand & np.isin(lab, idx[frac >= p["enh_near_fraction"]])
            enh_adjacent_ml = float(enhancing.sum() * vox_ml)
        if svol.size and svol.max() >= 1.0 and lesion.any():  # largest asymmetric enhancement away from lesion?
            biggest = slab == int(np.argmax(svol)) + 1
            enh_far = not (biggest & _dilate(lesion, p["enh_adjacent_mm"], sp)).any()

    # core (label 1): the whole fluid/necrotic cavity next to the enhancement: components of t1c-dark, fluid-like
    # (T2-bright, FLAIR not CSF-dark, or T2-FLAIR mismatch) or in-lesion voxels, plus what the closed rim encloses
    necrotic = np.zeros(shape, bool)
    if enhancing.any():
        closed = _erode(_dilate(enhancing, p["close_mm"], sp), p["close_mm"], sp) | enhancing
        necrotic = _fill_holes(closed) & ~enhancing & fg
    tumour = lesion | enhancing | necrotic
    cav = None
    if "t1c" in zs:
        lesion_t1c = float(np.median(zs["t1c"][lesion])) if lesion.any() else 0.0
        dark = zs["t1c"] < min(p["core_t1c_z"], lesion_t1c - p["core_t1c_drop"])
        if "t2" in zs and "flair" in zs:
            fluid = (zs["t2"] - zs["flair"] > p["core_mismatch_z"]) | (zs["t2"] > p["core_t2_z"])
            fluid &= zs["flair"] > p["core_flair_z"]
        elif "t2" in zs:  # no FLAIR: only asymmetric fluid, enclosed by the tumour (CSF is bright too)
            fluid = (zs["t2"] > p["fluid_t2_z"]) & (asym(zs["t2"]) > p["seed_asym"] * mad)
        elif "flair" in zs:
            fluid = zs["flair"] > p["core_flair_z"]
        else:
            fluid = asym(zs["t1c"]) < -p["seed_asym"] * mad
        cav = dark & (fluid | lesion)
    elif "t2" in zs:
        cav = (zs["t2"] > p["core_t2_z"]) & (asym(zs["t2"]) > p["seed_asym"] * mad)
    core_extra = np.zeros(shape, bool)
    if cav is not None and tumour.any():
        near = np.zeros(shape, bool)
        near[_box(tumour, np.ceil(p["core_search_mm"] / sp).astype(int))] = True
        cand = cav & fg & ~enhancing & ~necrotic & near
        lab, n = _components(cand)
        if n:
            shell = ndi.binary_dilation(cand) & ~cand
            owner = np.where(shell, ndi.grey_dilation(lab, size=(3, 3, 3)), 0)
            enclosed = _means(tumour, owner, n)
            core_extra = np.isin(lab, np.nonzero(enclosed >= p["core_enclosed"])[0] + 1)
    if enhancing.any() and core_extra.any():
        lab, n = _components(core_extra)
        core_enh = np.isin(lab, np.unique(lab[_dilate(enhancing, p["core_touch_mm"], sp)])) & (lab > 0)
        necrotic |= core_enh
        # thin (inner/anterior) walls of the ring: weaker enhancement in the cavity's shell
        wall = _dilate(necrotic, p["wall_mm"], sp) & ~necrotic & (lesion | core_extra)
        wall &= (enh > p["wall_enh_z"]) & (zs["t1c"] > p["wall_t1c_z"])
        lab, _ = _components(wall | enhancing)  # hysteresis: weak wall voxels connected to the enhancement
        enhancing = np.isin(lab, np.unique(lab[enhancing])) & (lab > 0)
        necrotic = (necrotic | (_fill_holes(necrotic | enhancing) & (lesion | core_extra))) & ~enhancing
    lesion |= core_extra

    labels_c = np.zeros(shape, np.uint8)
    labels_c[lesion] = 2
    labels_c[necrotic] = 1
    labels_c[enhancing] = 3
    whole = labels_c > 0
    labels = np.zeros(full_shape, np.uint8)
    labels[box_t] = labels_c
    # QC
    brain_ml = float(fg.sum() * vox_ml)
    whole_ml = float(whole.sum() * vox_ml)
    mirrored = _mirror(whole, shift)
    mirror_dice = float(2 * (whole & mirrored).sum() / max(1, 2 * whole.sum()))
    rim_frac = float((whole & ~inner).sum() / max(1, whole.sum()))
    mean_asym = float(a_score[whole].mean()) if whole.any() and score_from != "none" else 0.0
    agree = {}
    for s in seqs:
        d = (z[s] - _mirror(z[s], shift))[whole] if whole.any() else np.zeros(1)
        med = float(np.median(d))
        agree[s] = {
            "median_asym": round(med, 2),
            "agrees": bool(abs(med) > (0.3 if s in ("t1", "t1c") else 0.5) and (med < 0 or s != "t1")),
        }
    n_agree = sum(v["agrees"] for v in agree.values())
    qc = {
        "volume_ml": {f"label{k}": round(float((labels_c == k).sum() * vox_ml), 2) for k in (1, 2, 3)},
        "whole_tumour_ml": round(whole_ml, 2),
        "brain_ml": round(brain_ml, 1),
        "rim_fraction": round(rim_frac, 3),
        "mirror_dice": round(mirror_dice, 3),
        "asymmetry_score": round(mean_asym, 2),
        "midline_x_vox": round(box[2].start + (shape[2] - 1 + shift) / 2, 1),
        "midline_corr": round(mid_corr, 3),
        "enh_candidate_ml": round(enh_candidate_ml, 2),
        "enh_adjacent_fraction": round(enh_adjacent_ml / enh_candidate_ml, 3) if enh_candidate_ml else None,
        "sequence_agreement": agree,
        "n_sequences_agree": n_agree,
        "roles": {"lesion_score": score_from, "enhancement": enh_from, "midline": ref},
    }

    # plausibility: short lower-case fragments (the caller joins them with "; ")
    if "t1c" in seqs and not {"t2", "flair"} & set(seqs):
        problems.append(f"{T1C_ONLY_PROBLEM}{'' if seqs == ['t1c'] else ' and t1'} given: oedema is invisible and "
                        "enhancement alone is unreliable")
    max_ml = min(p["max_volume_ml"], p["max_brain_fraction"] * brain_ml)
    if whole_ml < p["min_volume_ml"]:
        problems.append(f"no lesion found ({whole_ml:.1f} ml < {p['min_volume_ml']:g} ml)")
    if whole_ml > max_ml:
        problems.append(f"implausibly large ({whole_ml:.0f} ml > {max_ml:.0f} ml)")
    if whole.any() and rim_frac > p["max_rim_fraction"]:
        problems.append(f"mostly on the brain surface ({rim_frac:.0%} within {p['rim_mm']:g} mm of it)")
    if whole.any() and mirror_dice > p["max_mirror_dice"]:
        problems.append(f"nearly symmetric about the midline (mirror Dice {mirror_dice:.2f}): likely normal anatomy")
    elif whole.any() and score_from != "none" and mean_asym < p["min_asymmetry"]:
        problems.append(f"hardly asymmetric ({mean_asym:.1f} < {p['min_asymmetry']:g}): likely normal anatomy")
    if enh_far:
        problems.append("most asymmetric enhancement lies away from the flair/t2 lesion")
    if whole.any() and n_agree < min(2, len(seqs)):
        problems.append(f"only {n_agree} of {len(seqs)} sequences show the lesion as asymmetric")
    if mid_corr < p["min_midline_corr"]:
        problems.append(f"mid-sagittal plane not found (mirror correlation {mid_corr:.2f} < {p['min_midline_corr']:g})")
    return Segmentation(labels=labels, qc=qc, method=method, problems=problems)
