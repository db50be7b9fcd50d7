"""KiMap's web app driven by headless Chromium (Playwright): the whole workflow a clinician clicks through.

Load demo case → scroll and window/level in the red view → leave the oedema out of the region → place a point by
clicking in the red view → Predict biopsies → type the measured ki67 → Compute map and Cancel (nothing added) →
Compute map → a bad export folder (one error, nothing changed) → Export → Download → upload a volume file.
Asserts on the real MRML scene (nodes, the point's RAS, table values, the map on the t1c grid, finite exactly inside
the region) and on the exported files, never on pixels.
A screenshot goes to ``out/web/kimap-web.png`` (``KIMAP_UPDATE_DOCS_IMAGES=1`` also copies it to
``docs/images/web.png``).

Needs Debian's ``chromium`` (Playwright's own browser download does not work here) and EGL; skipped with a reason
when chromium is missing outside CI, a failure in CI (``CI=true``).
"""

from __future__ import annotations

import asyncio
import csv
import io
import math
import os
import shutil
import socket
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("KIMAP_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOT = REPO / "out" / "web" / "kimap-web.png"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _require_browser() -> None:
    missing = []
    if not CHROMIUM.is_file():
        missing.append(f"Debian's chromium ({CHROMIUM}; apt-get install --no-install-recommends chromium)")
    for module in ("playwright", "trame_slicer"):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"the Python package {module} (requirements.txt)")
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        if _in_ci():
            pytest.fail(f"{reason} — CI must run the browser test (.ci/run installs it)")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


STEPS: list[tuple[str, float]] = []
#: What the app says (its status line and error), added to a timeout's message.
DIAGNOSIS: list = []


async def _until(check, what: str, timeout: float = 60.0, interval: float = 0.2):
    """Poll ``check()`` (the real scene or page) until it returns something truthy."""
    STEPS.append((what, time.monotonic()))
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            said = "; ".join(str(describe()) for describe in DIAGNOSIS)
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} ({said})")
        await asyncio.sleep(interval)


def scene_state(scene) -> list[str]:
    """IDs of the scene's nodes, to check that a cancelled or failed step added or removed nothing."""
    return sorted(scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes()))


def _matrix(node) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _screen_point(red_node, box: dict, ras) -> tuple[float, float]:
    """Where RAS ``ras`` is on the page, inside the red view's image ``box`` (XY origin bottom-left in VTK)."""
    xy_to_ras = np.array([[red_node.GetXYToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    x, y, _, _ = np.linalg.solve(xy_to_ras, np.array([*ras, 1.0]))
    width, height, _ = red_node.GetDimensions()
    return box["x"] + x * box["width"] / width, box["y"] + box["height"] - y * box["height"] / height


@pytest.mark.asyncio
async def test_web_workflow_demo_point_predict_map_export(tmp_path):
    _require_browser()
    from KiMapLib.web.server import configure_rendering

    configure_rendering()
    import slicer
    from dicom_case import oblique_volume
    from playwright.async_api import async_playwright
    from scipy import ndimage
    from trame.app import get_server

    from KiMapLib.inputs.geometry import ijk_to_ras_matrix, nearest_voxel
    from KiMapLib.phantom import demo_patient
    from KiMapLib.progress import report
    from KiMapLib.slicer.nodes import image_from_node
    from KiMapLib.slicer.segments import SEGMENT_NAMES, tumour_labels
    from KiMapLib.slicer.tables import table_values
    from KiMapLib.web import server as web_server
    from KiMapLib.web.app import KiMapWebApp

    started = time.monotonic()
    server = get_server(f"kimap_test_{uuid.uuid4().hex}", client_type="vue3")
    app = KiMapWebApp(server, export_folder=tmp_path / "unused")
    scene = app.slicer_app.scene
    DIAGNOSIS[:] = [lambda: f"status {app.state.km_status!r}, error {app.state.km_error!r}"]
    port = _free_port()
    web_server.start(server, port=port, thread=True, exec_mode="task", show_connection_info=False)
    assert await server.ready
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                       args=["--no-sandbox", "--disable-gpu"])
            page = await browser.new_page(viewport={"width": 1500, "height": 950}, accept_downloads=True)
            await page.goto(f"http://127.0.0.1:{port}/")
            red_image = page.locator("img.image-display-area").first
            await _until(lambda: red_image.evaluate("i => i.naturalWidth > 0"), "the first frame of the red view")

            # -- Load demo case: four sequences, the region as three named segments, an empty point list ----------
            await page.get_by_role("button", name="Load demo case").click()
            await _until(lambda: app.session.t1c() is not None and not app.state.km_busy, "the demo case")
            volumes = app.session.volume_nodes()
            assert sorted(volumes) == ["adc", "flair", "t1c", "t2"]
            t1c = volumes["t1c"]
            region = app.session.region()
            segments = {row["name"]: row["id"] for row in app.session.segment_rows()}
            assert list(segments) == list(SEGMENT_NAMES.values())
            assert app.session.markups().GetNumberOfControlPoints() == 0
            await _until(lambda: page.get_by_text("T1C (synthetic)").first.is_visible(), "the volume table")

            # -- the red view scrolls with the wheel and windows/levels with a left drag, as in Slicer ------------
            red = next(n for n in scene.GetNodesByClass("vtkMRMLSliceNode") if n.GetLayoutName() == "Red")
            box = await red_image.bounding_box()
            centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            offset = red.GetSliceOffset()
            await page.mouse.move(*centre)
            for _ in range(3):
                await page.mouse.wheel(0, 120)
                await asyncio.sleep(0.15)
            await _until(lambda: abs(red.GetSliceOffset() - offset) >= 1.0, "the wheel to move the red slice")
            for _ in range(3):
                await page.mouse.wheel(0, -120)
                await asyncio.sleep(0.15)
            await _until(lambda: abs(red.GetSliceOffset() - offset) < 0.5, "the wheel to move it back")
            display = t1c.GetDisplayNode()
            window, level = display.GetWindow(), display.GetLevel()
            await page.mouse.move(*centre)
            await page.mouse.down()
            await page.mouse.move(centre[0] + 80, centre[1] + 40, steps=8)
            await page.mouse.up()
            await _until(lambda: (display.GetWindow(), display.GetLevel()) != (window, level), "window/level drag")
            await page.mouse.down()  # and back, near where it was
            await page.mouse.move(*centre, steps=8)
            await page.mouse.up()
            await _until(lambda: abs(display.GetWindow() - window) < 0.1 * window, "window/level drag back")

            # -- leave the oedema out: only the visible segments are mapped ---------------------------------------
            oedema = SEGMENT_NAMES[2]
            await page.get_by_label(oedema).uncheck()
            await _until(lambda: not region.GetDisplayNode().GetSegmentVisibility(segments[oedema]),
                         "the oedema segment to be left out")

            # -- place a point by clicking on an enhancing voxel of the red slice ------------------------------------
            labels = sitk.GetArrayFromImage(demo_patient().label)  # the phantom's truth: 1 necrotic, 2 enhancing
            shown = sitk.GetArrayFromImage(tumour_labels(region, t1c))  # the visible segments, KiMap's labels
            assert np.array_equal(shown > 0, (labels == 1) | (labels == 2))
            mask = labels == 2  # what is mapped: the enhancing tumour (the necrotic core never is)
            ijk_to_ras = _matrix(t1c)
            kji = np.argwhere(ndimage.binary_erosion(labels == 2, iterations=1))
            ras = (np.c_[kji[:, ::-1], np.ones(len(kji))] @ ijk_to_ras.T)[:, :3]
            plane = red.GetSliceToRAS()
            normal = np.array([plane.GetElement(i, 2) for i in range(3)])
            origin = np.array([plane.GetElement(i, 3) for i in range(3)])
            on_slice = ras[np.abs((ras - origin) @ normal) < 0.5]
            assert len(on_slice), "the red slice does not cut the enhancing rim"
            target = on_slice[np.argmin(np.linalg.norm(on_slice - on_slice.mean(axis=0), axis=1))]
            await page.get_by_role("button", name="Place biopsy points").click()
            await _until(lambda: app.state.km_placing, "place mode")
            box = await red_image.bounding_box()
            await page.mouse.click(*_screen_point(red, box, target))
            markups = app.session.markups()
            await _until(lambda: markups.GetNumberOfControlPoints() >= 1 and markups.GetNthControlPointPositionStatus(0)
                         == markups.PositionDefined, "the clicked point")  # not the preview that follows the mouse
            point = np.zeros(3)
            markups.GetNthControlPointPositionWorld(0, point)
            assert np.linalg.norm(point - target) < 1.5, (point, target)
            assert nearest_voxel(image_from_node(t1c, "t1c"), point) is not None
            await page.get_by_role("button", name="Stop placing points").click()
            await _until(lambda: markups.GetNumberOfControlPoints() == 1, "place mode to end (no preview point)")

            # -- Predict biopsies: one row, finite prediction and probability, shown in the page ---------------------
            await page.get_by_role("button", name="Predict biopsies").click()
            table = await _until(lambda: not app.state.km_busy and app.session.table(), "the biopsy table", 90)
            rows = table_values(table)
            assert len(rows) == 1 and rows[0]["biopsy"] == "B1"
            assert 0.0 <= rows[0]["predicted_ki67"] <= 100.0 and 0.0 <= rows[0]["probability_high"] <= 1.0
            assert np.allclose([rows[0]["r"], rows[0]["a"], rows[0]["s"]], point)
            await _until(lambda: page.get_by_text(f"{rows[0]['predicted_ki67']:.1f} %").first.is_visible(),
                         "the predicted value in the page")
            measured = page.get_by_label("measured ki67 of B1")
            await measured.fill("23.5")
            await measured.press("Enter")
            await _until(lambda: table_values(app.session.table())[0]["measured_ki67"] == 23.5, "measured ki67")

            # -- Compute map, Cancel: progress shown, then nothing added. The first job only reports progress until
            # it is cancelled (a real map may finish before the click lands); the progress callback is the page's.
            real_prepare = app.logic.prepareMap

            def cancellable_prepare(*args, **kwargs):
                job = real_prepare(*args, **kwargs)

                def run(progress=None):
                    for step in range(1200):
                        report(progress, step / 1200, "waiting for Cancel")
                        time.sleep(0.05)
                    raise AssertionError("Cancel did not reach the computation")

                job.run = run
                app.logic.prepareMap = real_prepare
                return job

            app.logic.prepareMap = cancellable_prepare
            nodes_before = scene_state(scene)
            await page.get_by_role("button", name="Compute map").click()
            await _until(lambda: page.get_by_text("waiting for Cancel").is_visible(), "the progress bar", 30)
            assert await page.get_by_label("map progress").is_visible()
            await page.get_by_role("button", name="Cancel").click()
            await _until(lambda: not app.state.km_busy, "the cancelled computation", 60)
            assert app.state.km_status == "Map computation cancelled; nothing was changed."
            assert app.session.ki67() is None and scene_state(scene) == nodes_before

            # -- Compute map: the map on the t1c grid, finite exactly inside the region -----------------------------
            await page.get_by_role("button", name="Compute map").click()
            ki67 = await _until(lambda: not app.state.km_busy and app.session.ki67(), "the ki67 map", 240, 0.5)
            assert ki67.GetImageData().GetDimensions() == t1c.GetImageData().GetDimensions()
            assert np.array_equal(_matrix(ki67), ijk_to_ras)
            values = slicer.util.arrayFromVolume(ki67)
            inside = mask
            assert np.isfinite(values[inside]).all() and not np.isfinite(values[~inside]).any()
            assert np.nanmin(values) >= 0.0 and np.nanmax(values) <= 100.0
            assert ki67.GetDisplayNode().GetColorNode().GetName() == "KiMapKi67"
            await _until(lambda: page.get_by_text("color table KiMapKi67").is_visible(), "the color legend")
            nodes_before_error = scene_state(scene)

            # -- a bad export folder: one message naming the input, nothing changed or written ----------------------
            not_a_folder = tmp_path / "a-file"
            not_a_folder.write_text("mine")
            export_field = page.get_by_label("Export folder (on the server)")
            await export_field.fill(str(not_a_folder))
            await page.get_by_role("button", name="Export", exact=True).click()
            alert = page.get_by_role("alert")
            await _until(lambda: alert.is_visible(), "the error message")
            assert (await alert.inner_text()).strip().startswith("export folder:")
            assert not_a_folder.read_text() == "mine" and scene_state(scene) == nodes_before_error

            # -- Export: NRRD and NIfTI files equal to the scene's map; the table with the measured value ------------
            export_root = tmp_path / "export"
            await export_field.fill(str(export_root))
            await page.get_by_role("button", name="Export", exact=True).click()
            folder = Path(await _until(lambda: app.state.km_exported, "the export", 60))
            assert folder.parent == export_root
            for name in ("ki67_map.nrrd", "ki67_map.nii.gz", "ki67_probability.nrrd", "summary.json",
                         "biopsies.csv"):
                assert (folder / name).is_file(), name
            written = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "ki67_map.nrrd")))
            assert np.array_equal(np.isfinite(written), inside)
            assert np.allclose(written[inside], values[inside])
            with (folder / "biopsies.csv").open() as handle:
                (row,) = list(csv.DictReader(handle))
            assert float(row["measured_ki67"]) == 23.5 and math.isfinite(float(row["predicted_ki67"]))

            # -- Download: the same files as one zip ------------------------------------------------------------------
            async with page.expect_download() as download_info:
                await page.get_by_role("button", name="Download").click()
            download = await download_info.value
            data = Path(await download.path()).read_bytes()
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
            assert f"{folder.name}/ki67_map.nrrd" in names and f"{folder.name}/biopsies.csv" in names

            await _until(lambda: not app.state.km_busy, "the page to be idle")
            await asyncio.sleep(1.0)  # the last frame
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(SCREENSHOT))
            if os.environ.get("KIMAP_UPDATE_DOCS_IMAGES"):
                shutil.copyfile(SCREENSHOT, REPO / "docs" / "images" / "web.png")

            # -- Load volume files: an upload from the browser becomes a node with the file's geometry -------------
            upload = oblique_volume(seed=5)
            sitk.WriteImage(upload, str(tmp_path / "FLAIR_followup.nii.gz"))
            picker = page.get_by_role("group", name="Load volume files").locator("input[type=file]")
            await picker.set_input_files(str(tmp_path / "FLAIR_followup.nii.gz"))
            uploaded = await _until(lambda: scene.GetFirstNodeByName("FLAIR_followup"), "the uploaded volume", 60)
            assert np.allclose(_matrix(uploaded), ijk_to_ras_matrix(upload), atol=1e-5)
            assert app.session.assignment["flair"] == uploaded.GetID()  # assigned by its name
            await browser.close()
    finally:
        await server.stop()
    print(f"web workflow test: {time.monotonic() - started:.1f} s")
    for (what, at), (_, after) in zip(STEPS, [*STEPS[1:], ("end", time.monotonic())], strict=True):
        print(f"  {at - started:6.1f} s  {after - at:5.1f} s  {what}")
