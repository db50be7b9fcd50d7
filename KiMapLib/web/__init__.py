"""The browser front end (``kimap web``): takes a MRML scene and the shared adapter
:class:`KiMapLib.slicer.KiMapLogic`, gives a web page built from trame-slicer pieces — slice views rendered on the
server (the browser only shows images), markups placement, the segment editor — and KiMap's side panel (images,
model card, tumour region, biopsy table, map with progress/cancel and legend, export). No logic of its own.

``KiMapLib.web.server`` (access rules, start) imports nothing heavy; ``KiMapLib.web.app`` needs the
``trame-slicer[standalone]`` stack pinned in requirements.txt.
"""
