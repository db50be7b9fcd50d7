"""Maps, the fifth stage: the whole-tumour ki67 map and its pictures.

Takes a prepared case, a region and a model and gives ki67 and probability images on the t1c grid (NaN outside
the mapped region), a summary of what was used, and the overlay picture (:mod:`~KiMapLib.maps.pictures`).
"""
