"""The web app's parts that need no browser: who may connect, the trame options it pins, the legend read from the
map node, the model card's markup, the sequence guesses. (The workflow itself: test_web_browser.py.)"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np
import pytest

from KiMapLib.app.cli import main
from KiMapLib.errors import KiMapError
from KiMapLib.web.server import app_url, check_access, pin_server_options


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_this_machine_needs_no_token(host):
    check_access(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "kimap.example.org"])
def test_another_host_needs_a_token(host):
    with pytest.raises(KiMapError, match=r"^--host: refusing to serve on .* without an access token — add --token"):
        check_access(host, None)
    check_access(host, "a-long-random-token")


def test_an_empty_token_is_refused():
    with pytest.raises(KiMapError, match="^--token: the access token is empty"):
        check_access("0.0.0.0", "  ")


def test_kimap_web_refuses_host_without_token_before_starting(capsys, monkeypatch):
    monkeypatch.delenv("KIMAP_WEB_TOKEN", raising=False)
    assert main(["web", "--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["kimap web: error: --host: refusing to serve on 0.0.0.0 without an access token — add --token T "
                   "(a long random string) and open http://HOST:PORT/?secret=T; without --host the app listens on "
                   "127.0.0.1 only"]


def test_trame_gets_exactly_our_host_port_and_token(monkeypatch):
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--authKey", default="wslink-secret")
    parser.add_argument("--verbose", action="store_true")
    server = SimpleNamespace(cli=parser)
    monkeypatch.setattr("sys.argv", ["kimap", "web", "--host", "0.0.0.0", "--verbose", "--port", "9"])
    pin_server_options(server, "127.0.0.1", 8123, "s3cret")
    options, _ = server.cli.parse_known_args()
    assert (options.host, options.port, options.authKey, options.verbose) == ("127.0.0.1", 8123, "s3cret", False)


def test_app_url_carries_the_token():
    assert app_url("127.0.0.1", 8080) == "http://127.0.0.1:8080/"
    assert app_url("::1", 8080, "t0k") == "http://[::1]:8080/?secret=t0k"


def test_model_card_markup_keeps_only_bold_italic_and_breaks():
    from KiMapLib.web.session import safe_card_html

    text = "<b>m</b><br>P(high) = probability that ki67 &gt; 20 %<br><i>Research use only</i><script>x()</script>" \
           "<b onclick=y()>z</b>"
    assert safe_card_html(text) == ("<b>m</b><br>P(high) = probability that ki67 &gt; 20 %<br><i>Research use only"
                                    "</i>&lt;script&gt;x()&lt;/script&gt;&lt;b onclick=y()&gt;z</b>")


@pytest.mark.parametrize(("name", "sequence"), [("T1CE.nii.gz", "t1c"), ("sub-01_T1w_Gd.nrrd", "t1c"),
                                                ("flair.nii", "flair"), ("ADC_map", "adc"), ("T2W", "t2"),
                                                ("t1.nii.gz", "t1"), ("dwi", None)])
def test_sequence_guess_from_names(name, sequence):
    from KiMapLib.web.session import guess_sequence

    assert guess_sequence(name) == sequence


def test_legend_is_read_from_the_map_node():
    pytest.importorskip("slicer")
    from KiMapLib.inputs.geometry import image_from_array
    from KiMapLib.slicer import KiMapLogic, set_map_display
    from KiMapLib.slicer.scene_io import setup_headless_scene
    from KiMapLib.web.legend import legend

    scene = setup_headless_scene()
    logic = KiMapLogic(scene)
    t1c = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "T1C")
    from KiMapLib.slicer.nodes import update_node_from_image

    update_node_from_image(t1c, image_from_array(np.ones((4, 5, 6), np.float32), np.diag([1.1, 0.9, 2.0, 1.0])))
    values = image_from_array(np.full((4, 5, 6), 30.0, np.float32), np.diag([1.1, 0.9, 2.0, 1.0]))
    ki67, probability = logic.addMapNodes(SimpleNamespace(t1c_node=t1c, model=None),
                                          SimpleNamespace(ki67=values, probability=values, summary={}))
    shown = legend(ki67, stops=16)
    assert shown["color_table"] == "KiMapKi67" and shown["title"] == "ki67 (%)"
    assert shown["ticks"] == ["0 %", "25 %", "50 %", "75 %", "100 %"]  # the window set_map_display gave the node
    assert shown["gradient"].startswith("linear-gradient(to right, rgb(68,1,84) 0.0%")  # first entry of the table
    assert shown["gradient"].endswith("rgb(253,231,37) 100.0%)")  # its last entry
    set_map_display(ki67, window=(0.0, 60.0))
    assert legend(ki67)["ticks"][-1] == "60 %"
    assert legend(probability)["ticks"] == ["0.0", "0.2", "0.5", "0.8", "1.0"]
