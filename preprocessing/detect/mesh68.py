"""FaceMesh 468 points -> the iBUG 300-W 68-point layout that alignment and masks expect.

Each iBUG point is one mesh vertex or the mean of two where no single vertex sits at the iBUG
position. On frontal faces the 33 points alignment uses (iBUG 17..48 and 54) land within ~3-5% of
the inter-ocular distance of dlib's 68-point model. The mapped jaw follows the 3-D silhouette, so
on 3/4 views it lies outside the visible jaw; masks should prefer the dense points' hull there.
"""
from __future__ import annotations

import numpy as np

# iBUG index -> mesh vertices whose mean gives it, grouped by region in iBUG order.
MESH_TO_IBUG68: tuple[tuple[int, ...], ...] = (
    # 0..16 jaw, from the subject's right ear to the left ear
    (127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,),
    (400,), (379,), (365,), (397, 288), (361,), (323,), (454,), (356,),
    # 17..21 right brow, 22..26 left brow
    (70,), (63,), (105,), (66,), (107,),
    (336,), (296,), (334,), (293,), (300,),
    # 27..30 nose bridge to tip, 31..35 nostrils
    (168, 6), (197, 195), (5,), (4,),
    (75,), (97,), (2,), (326,), (305,),
    # 36..41 right eye, 42..47 left eye (clockwise from the outer/inner corner)
    (33,), (160,), (158,), (133,), (153,), (144,),
    (362,), (385,), (387,), (263,), (373,), (380,),
    # 48..59 outer lips, 60..67 inner lips
    (61,), (39,), (37,), (0,), (267,), (269,), (291,), (321,), (314,), (17,), (84,), (91,),
    (78,), (82,), (13,), (312,), (308,), (317,), (14,), (87,),
)
assert len(MESH_TO_IBUG68) == 68


def _averaging_matrix() -> np.ndarray:
    """The map as a [68, 468] matrix of weights, so the conversion is one matrix product."""
    weights = np.zeros((68, 468), np.float32)
    for row, vertices in enumerate(MESH_TO_IBUG68):
        weights[row, list(vertices)] = 1.0 / len(vertices)
    return weights


_AVERAGING = _averaging_matrix()


def mesh_to_ibug68(points: np.ndarray) -> np.ndarray:
    """[468, 2] (or [468, C]) mesh points -> float32 [68, 2] (or [68, C]) iBUG-68 points."""
    points = np.asarray(points, np.float32)
    if points.shape[0] != 468:
        raise ValueError(f"expected 468 FaceMesh points, got an array of shape {points.shape}")
    return _AVERAGING @ points
