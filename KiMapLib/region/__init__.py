"""The tumour region, the second stage: where on the images the map belongs.

Takes the prepared sequences of a case and gives a BraTS-convention label map on the t1c grid (1 necrotic core,
2 oedema / non-enhancing tumour, 3 enhancing tumour), its quality-control numbers and picture, and a plausibility
verdict that refuses a region on normal anatomy.
"""
