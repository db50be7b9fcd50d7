"""KiMap: ki67 maps of glioblastoma from coregistered MRI (3D Slicer module; GUI wiring only).

The computation lives in ``KiMapLib``; the MRML logic is ``KiMapLib.slicer.KiMapLogic`` (also the console API).
Research use only: not a medical device; no clinical validity is claimed.
"""

import logging
import sys
from pathlib import Path
from typing import Annotated, Union

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:  # installed extension: KiMapLib lies beside this file; source tree: in the folder above it
    import KiMapLib  # noqa: F401
except ImportError:
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from KiMapLib.slicer import (  # the MRML adapter: the only part of KiMapLib this module imports
    Cancelled,
    add_color_legend,
    dependency_message,
    missing_dependencies,
    resources_dir,
    set_map_display,
    uncertainty_text,
)
from KiMapLib.slicer import KiMapLogic as KiMapMRMLLogic

SEQUENCE_PARAMETERS = {"t1c": "t1cVolume", "t2": "t2Volume", "flair": "flairVolume", "adc": "adcVolume",
                       "t1": "t1Volume"}


class KiMap(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "KiMap"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = []
        self.parent.contributors = ["KiMap contributors"]
        self.parent.helpText = (
            "Estimate ki67 maps of glioblastoma from coregistered t1c, T2, FLAIR, ADC and t1 volumes: radiomics around "
            "image-localized biopsy points and a packaged scikit-learn model. Predict ki67 at clicked biopsy points, "
            "compute the map over the tumor region, show it over the slices and export it. "
            "Research use only: not a medical device; no clinical validity is claimed. "
            "See the README's 'Use in 3D Slicer' section and docs/slicer.md."
        )
        self.parent.acknowledgementText = (
            "KiMap uses pyradiomics (via the SlicerRadiomics extension), SimpleITK and scikit-learn. "
            "Its packaged model is trained on a synthetic phantom cohort."
        )
        icon = resources_dir() / "Icons" / "KiMap.png"
        if icon.is_file():
            self.parent.icon = qt.QIcon(str(icon))


@parameterNodeWrapper
class KiMapParameterNode:
    t1cVolume: slicer.vtkMRMLScalarVolumeNode
    t2Volume: slicer.vtkMRMLScalarVolumeNode
    flairVolume: slicer.vtkMRMLScalarVolumeNode
    adcVolume: slicer.vtkMRMLScalarVolumeNode
    t1Volume: slicer.vtkMRMLScalarVolumeNode
    regionNode: Union[slicer.vtkMRMLSegmentationNode, slicer.vtkMRMLLabelMapVolumeNode]  # noqa: UP007
    biopsyMarkups: slicer.vtkMRMLMarkupsFiducialNode
    biopsyTable: slicer.vtkMRMLTableNode
    ki67Map: slicer.vtkMRMLScalarVolumeNode
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.6
    threshold: Annotated[float, WithinRange(0.0, 100.0)] = 0.0
    showLegend: bool = True
    showLayer: Annotated[str, Choice(["ki67", "lower", "upper", "probability", "ood"])] = "ki67"
    exportDirectory: Path
    exportNrrd: bool = True
    exportNifti: bool = True
    exportDicom: bool = False
    referenceDicomDirectory: Path


class KiMapWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.model = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._cancelRequested = False
        self._busy = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(resources_dir() / "UI" / "KiMap.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = KiMapLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.biopsyMarkupsSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onMarkupsChanged)
        self.ui.biopsyTableSelector.connect("currentNodeChanged(vtkMRMLNode*)",
                                            self.ui.biopsyTableView.setMRMLTableNode)
        self.ui.loadModelButton.connect("clicked(bool)", self.onLoadModel)
        self.ui.packagedModelButton.connect("clicked(bool)", self.onPackagedModel)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.proposeRegionButton.connect("clicked(bool)", self.onProposeRegion)
        self.ui.predictButton.connect("clicked(bool)", self.onPredict)
        self.ui.computeMapButton.connect("clicked(bool)", self.onComputeMap)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.progressBar.setVisible(False)
        self.updateDependencyState()
        self.initializeParameterNode()

    # -- parameter node ---------------------------------------------------------------------------------------

    def cleanup(self):
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.t1cVolume:
            self._parameterNode.t1cVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None):
        parameters = self._parameterNode
        ready = bool(parameters and parameters.t1cVolume and not missing_dependencies() and not self._busy)
        self.ui.predictButton.enabled = ready and bool(parameters.biopsyMarkups)
        self.ui.computeMapButton.enabled = ready
        self.ui.proposeRegionButton.enabled = ready
        self.ui.exportButton.enabled = bool(parameters and parameters.ki67Map) and not self._busy
        self.ui.biopsyPlaceWidget.setCurrentNode(parameters.biopsyMarkups if parameters else None)
        if parameters and parameters.ki67Map and parameters.ki67Map.GetAttribute("KiMap.Map") == "ki67":
            self.updateMapDisplay()

    def updateMapDisplay(self):
        parameters = self._parameterNode
        set_map_display(parameters.ki67Map, lower_threshold=parameters.threshold)
        legend = slicer.modules.colors.logic().GetColorLegendDisplayNode(parameters.ki67Map)
        if legend is None and parameters.showLegend:
            legend = add_color_legend(parameters.ki67Map)
        if legend is not None:
            legend.SetVisibility(parameters.showLegend)
        shown = self.logic.mapNodes(parameters.ki67Map).get(parameters.showLayer, parameters.ki67Map)
        slicer.util.setSliceViewerLayers(foreground=shown, foregroundOpacity=parameters.opacity)
        self.ui.uncertaintyLabel.text = uncertainty_text(parameters.ki67Map)

    # -- inputs and model ---------------------------------------------------------------------------------------

    def volumeNodes(self):
        return {name: getattr(self._parameterNode, attr) for name, attr in SEQUENCE_PARAMETERS.items()
                if getattr(self._parameterNode, attr) is not None}

    def onMarkupsChanged(self, node):
        self.ui.biopsyPlaceWidget.setCurrentNode(node)

    def updateDependencyState(self):
        message = dependency_message()
        self.ui.dependencyLabel.text = message or ""
        self.ui.dependencyLabel.setVisible(bool(message))
        self.ui.installDependenciesButton.setVisible(bool(message))
        if not message and self.model is None:
            self.onPackagedModel(quiet=True)

    def onInstallDependencies(self):
        missing = [name for name in missing_dependencies() if name != "radiomics"]
        if "radiomics" in missing_dependencies():
            slicer.util.infoDisplay("pyradiomics comes with the SlicerRadiomics extension: install it from the "
                                    "Extensions Manager and restart Slicer.")
        requirements = {"sklearn": "scikit-learn", "skops": "skops"}
        if missing and slicer.util.confirmOkCancelDisplay(
                f"Install {', '.join(requirements[name] for name in missing)} into Slicer's Python?"):
            with slicer.util.tryWithErrorDisplay("Installing Python packages failed.", waitCursor=True):
                slicer.util.pip_install(" ".join(requirements[name] for name in missing))
        self.updateDependencyState()
        self.onParameterNodeModified()

    def showModel(self, model):
        self.model = model
        self.ui.modelCardLabel.text = KiMapMRMLLogic.modelCardText(model)

    def onPackagedModel(self, quiet=False):
        try:
            self.showModel(self.logic.loadModel())
        except Exception as error:  # a missing/corrupt bundle must not stop the module from loading
            self.ui.modelCardLabel.text = f"No model: {error}"
            if not quiet:
                slicer.util.errorDisplay(str(error))

    def onLoadModel(self):
        path = self.ui.modelPathLineEdit.currentPath
        with slicer.util.tryWithErrorDisplay("Could not load the model bundle.", waitCursor=True):
            self.showModel(self.logic.loadModel(path or None))

    # -- computations -------------------------------------------------------------------------------------------

    def progress(self, fraction, message):
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.statusLabel.text = message
        slicer.app.processEvents()
        return not self._cancelRequested

    def onCancel(self):
        self._cancelRequested = True

    def runWithProgress(self, description, function):
        """Run a logic call with progress and cancel. Errors are shown; the logic leaves the scene as it was."""
        self._busy, self._cancelRequested = True, False
        self.ui.cancelButton.enabled = True
        self.ui.progressBar.setVisible(True)
        self.onParameterNodeModified()
        try:
            with slicer.util.tryWithErrorDisplay(f"{description} failed.", waitCursor=True):
                try:
                    return function()
                except Cancelled:
                    self.ui.statusLabel.text = f"{description} cancelled; nothing was changed."
                    return None
        except Exception as error:  # already shown to the user by tryWithErrorDisplay
            self.ui.statusLabel.text = str(error)
            logging.error(f"KiMap: {description} failed: {error}")
            return None
        finally:
            self._busy = False
            self.ui.cancelButton.enabled = False
            self.ui.progressBar.setVisible(False)
            self.onParameterNodeModified()

    def onProposeRegion(self):
        parameters = self._parameterNode
        segmentation = parameters.regionNode if parameters.regionNode and parameters.regionNode.IsA(
            "vtkMRMLSegmentationNode") else None
        node = self.runWithProgress("Tumour region", lambda: self.logic.proposeTumorRegion(
            self.volumeNodes(), segmentation, progress=self.progress))
        if node is not None:
            parameters.regionNode = node
            self.ui.statusLabel.text = ("Tumour region proposed: check and edit it in the Segment Editor "
                                        "(the map covers all but the necrotic core).")

    def onPredict(self):
        parameters = self._parameterNode
        table = self.runWithProgress("Biopsy prediction", lambda: self.logic.predictBiopsies(
            self.volumeNodes(), parameters.biopsyMarkups, self.model, tableNode=parameters.biopsyTable,
            progress=self.progress))
        if table is not None:
            parameters.biopsyTable = table
            self.ui.statusLabel.text = f"Predicted ki67 at {table.GetNumberOfRows()} biopsy points."

    def onComputeMap(self):
        parameters = self._parameterNode
        partner = parameters.ki67Map and slicer.mrmlScene.GetNodeByID(
            parameters.ki67Map.GetAttribute("KiMap.ProbabilityNodeID") or "")
        nodes = self.runWithProgress("Map computation", lambda: self.logic.computeMap(
            self.volumeNodes(), parameters.regionNode, self.model, ki67Node=parameters.ki67Map,
            probabilityNode=partner, lowerThreshold=parameters.threshold, progress=self.progress))
        if nodes is not None:
            parameters.ki67Map = nodes[0]
            slicer.util.setSliceViewerLayers(background=parameters.t1cVolume, foreground=nodes[0],
                                             foregroundOpacity=parameters.opacity, fit=True)
            self.updateMapDisplay()
            self.ui.statusLabel.text = "ki67 map computed (research use only). " + uncertainty_text(nodes[0])

    def onExport(self):
        parameters = self._parameterNode
        formats = [name for name, checked in (("nrrd", parameters.exportNrrd), ("nifti", parameters.exportNifti),
                                              ("dicom", parameters.exportDicom)) if checked]
        folder = self.runWithProgress("Export", lambda: self.logic.exportMap(
            parameters.ki67Map, str(parameters.exportDirectory or ""), tableNode=parameters.biopsyTable,
            formats=formats, referenceDicomDirectory=str(parameters.referenceDicomDirectory or "") or None,
            progress=self.progress))
        if folder is not None:
            self.ui.statusLabel.text = f"Exported to {folder}"


class KiMapLogic(ScriptedLoadableModuleLogic, KiMapMRMLLogic):
    """The module logic: parameter node handling plus :class:`KiMapLib.slicer.logic.KiMapLogic` (nodes in/out)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        KiMapMRMLLogic.__init__(self)

    def getParameterNode(self):
        return KiMapParameterNode(super().getParameterNode())


class KiMapTest(ScriptedLoadableModuleTest):
    """Self-test on data made on the fly (oblique, anisotropic volumes; no downloads)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_KiMap_logic_on_synthetic_case()

    def test_KiMap_logic_on_synthetic_case(self):
        import numpy as np

        self.delayDisplay("Making a synthetic case")
        c, s = np.cos(0.4), np.sin(0.4)
        matrix = np.eye(4)  # oblique (rotated about S) and anisotropic (1.1 x 0.9 x 2.2 mm)
        matrix[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1.1, 0.9, 2.2])
        matrix[:3, 3] = [-30.0, 12.0, -8.0]
        k, j, i = np.indices((24, 40, 40))
        tumor = ((i - 20) / 8.0) ** 2 + ((j - 20) / 8.0) ** 2 + ((k - 12) / 4.0) ** 2 <= 1.0
        brain = ((i - 19.5) / 17) ** 2 + ((j - 19.5) / 17) ** 2 + ((k - 11.5) / 10.5) ** 2 <= 1.0
        rng = np.random.default_rng(0)
        volumes = {}
        for number, name in enumerate(("t1c", "t2", "flair", "adc")):
            array = np.where(brain, 100 + 20 * number + rng.normal(0, 8, tumor.shape) + 60 * tumor, 0)
            volumes[name] = slicer.util.addVolumeFromArray(array.astype("float32"), ijkToRAS=matrix, name=name)
        region = slicer.util.addVolumeFromArray(tumor.astype("uint8"), ijkToRAS=matrix, name="tumor",
                                                nodeClassName="vtkMRMLLabelMapVolumeNode")
        markups = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Biopsies")
        markups.AddControlPoint(*(matrix @ [20, 20, 12, 1])[:3], "B1")

        message = dependency_message()
        if message:
            self.delayDisplay(f"Skipping the computation: {message}")
            return
        logic = KiMapLogic()
        model = logic.loadModel()
        table = logic.predictBiopsies(volumes, markups, model)
        self.assertEqual(table.GetNumberOfRows(), 1)
        ki67Node, _probabilityNode = logic.computeMap(volumes, region, model)
        self.assertEqual(ki67Node.GetImageData().GetDimensions(), volumes["t1c"].GetImageData().GetDimensions())
        nodeMatrix, inputMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        ki67Node.GetIJKToRASMatrix(nodeMatrix)
        volumes["t1c"].GetIJKToRASMatrix(inputMatrix)
        for row in range(4):
            for column in range(4):
                self.assertAlmostEqual(nodeMatrix.GetElement(row, column), inputMatrix.GetElement(row, column), 9)
        self.assertEqual(ki67Node.GetDisplayNode().GetColorNode().GetName(), "KiMapKi67")
        markups.AddControlPoint(500, 500, 500, "FAR")
        nodeCount = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(ValueError):
            logic.predictBiopsies(volumes, markups, model)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodeCount)
        logging.info("KiMap self-test passed")
        self.delayDisplay("Test passed")
