"""The map's color legend for the page, read from the map node itself: its color table node (KiMap's shipped
``KiMapKi67`` table) and its display window (set by :func:`KiMapLib.slicer.display.set_map_display`), so the legend
always matches what the slice views draw."""

from __future__ import annotations


def legend(map_node, stops: int = 16, ticks: int = 5) -> dict[str, object] | None:
    """``{"gradient": CSS linear-gradient, "ticks": [label...], "title", "color_table", "low", "high"}`` or None."""
    display = map_node.GetDisplayNode() if map_node is not None else None
    color_node = display.GetColorNode() if display is not None else None
    if color_node is None or color_node.GetNumberOfColors() < 2:
        return None
    low, high = display.GetWindowLevelMin(), display.GetWindowLevelMax()
    count = color_node.GetNumberOfColors()
    colors = []
    rgba = [0.0, 0.0, 0.0, 0.0]
    for step in range(stops):
        color_node.GetColor(round(step * (count - 1) / (stops - 1)), rgba)
        colors.append(f"rgb({round(255 * rgba[0])},{round(255 * rgba[1])},{round(255 * rgba[2])}) "
                      f"{100 * step / (stops - 1):.1f}%")
    from KiMapLib.slicer.display import MAP_KINDS

    _, title, label_format, unit, *_ = MAP_KINDS.get(map_node.GetAttribute("KiMap.Map") or "ki67", MAP_KINDS["ki67"])
    suffix = f" {unit}" if unit else ""
    labels = [f"{label_format % (low + (high - low) * k / (ticks - 1))}{suffix}" for k in range(ticks)]
    return {"gradient": f"linear-gradient(to right, {', '.join(colors)})", "ticks": labels,
            "title": title, "color_table": color_node.GetName(), "low": low, "high": high}
