"""Every node of a skops model file, checked against KiMap's own allow-list before skops reads anything.

skops (0.13, protocol 2) rebuilds objects from the file's ``schema.json``: each node's ``__loader__`` says how, and
many loaders import or call what the node names — ``ObjectNode`` a class, ``FunctionNode`` and ``TypeNode`` any
attribute of any module, ``MethodNode`` a bound method (``str.format``, ``ndarray.tofile``), ``OperatorFuncNode``,
``PartialNode``, ``LossNode``, ``ConstructorFromReduceNode`` a callable with arguments, ``NdArrayNode`` its class
on the loaded array. skops trusts many of these by default. KiMap reads ``schema.json`` itself and accepts a file
only if every node is one of the kinds in :data:`ALLOWED`, of one of the exact types listed for that kind, in a
place where that kind may appear, with only the keys that kind has. Nothing is imported, called or built here.
"""

from __future__ import annotations

import io
import json
import zipfile

from KiMapLib.errors import ModelError

#: The skops persistence protocol(s) whose loaders this module knows (skops 0.13 writes 2).
PROTOCOLS = frozenset({2})

#: The classes a KiMap pipeline is made of (KiMapLib.model.candidates: every family).
ESTIMATOR_TYPES = frozenset({
    "sklearn.pipeline.Pipeline",
    "sklearn.impute._base.SimpleImputer",
    "sklearn.feature_selection._variance_threshold.VarianceThreshold",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.feature_selection._univariate_selection.SelectKBest",
    "sklearn.linear_model._ridge.Ridge",
    "sklearn.linear_model._coordinate_descent.ElasticNet",
    "sklearn.ensemble._forest.RandomForestRegressor",
    "sklearn.ensemble._gb.GradientBoostingRegressor",
    "sklearn.tree._classes.DecisionTreeRegressor",
})
#: The functions a KiMap pipeline may hold: SelectKBest's score function (the F-test, or KiMap's mRMR ranking).
FUNCTION_TYPES = frozenset({"sklearn.feature_selection._univariate_selection.f_regression",
                            "KiMapLib.model.mrmr.mrmr_scores"})
TREE_TYPE = "sklearn.tree._tree.Tree"
#: The one object array KiMap reads: a GradientBoostingRegressor's ``estimators_`` (one DecisionTreeRegressor per
#: row). skops stores it as an NdArrayNode of ``type`` "json"; anywhere else such a node is refused.
BOOSTING_TYPE = "sklearn.ensemble._gb.GradientBoostingRegressor"
TREE_ESTIMATOR_TYPE = "sklearn.tree._classes.DecisionTreeRegressor"

#: Node kind (skops ``__loader__``) -> the exact ``module.class`` names it may carry. No other kind is read.
ALLOWED: dict[str, frozenset[str]] = {
    "ObjectNode": ESTIMATOR_TYPES,
    "TreeNode": frozenset({TREE_TYPE}),
    "FunctionNode": FUNCTION_TYPES,
    "DictNode": frozenset({"builtins.dict"}),
    "ListNode": frozenset({"builtins.list"}),
    "TupleNode": frozenset({"builtins.tuple"}),
    "JsonNode": frozenset({"builtins.str"}),  # skops' name for every JSON scalar (str, int, float, bool, None)
    "NdArrayNode": frozenset({"numpy.ndarray", "numpy.float64", "numpy.int64"}),
    "DTypeNode": frozenset({"numpy.dtype"}),
    "TypeNode": frozenset({"builtins.str"}),  # only as the key type of a dict
}

#: skops 0.13 node kinds that KiMap never reads, and why (for the refusal message).
REFUSED = {
    "MethodNode": "a bound method", "PartialNode": "a functools.partial",
    "OperatorFuncNode": "an operator.attrgetter/itemgetter/methodcaller",
    "ConstructorFromReduceNode": "a call of its type with arguments", "LossNode": "a call of its type (loss)",
    "ReduceNode": "a __reduce__ call", "DefaultDictNode": "a defaultdict and its factory",
    "SetNode": "a set", "SliceNode": "a slice", "BytesNode": "raw bytes", "BytearrayNode": "raw bytes",
    "MaskedArrayNode": "a masked array", "RandomStateNode": "a random state", "RandomGeneratorNode": "a generator",
    "SparseMatrixNode": "a sparse matrix", "CachedNode": "a cached reference", "QuantileForestNode": "a forest",
    "_DictWithDeprecatedKeysNode": "a dict subclass",
}

_COMMON = frozenset({"__class__", "__module__", "__loader__", "__id__"})
#: The keys each allowed kind has besides ``_COMMON`` (a node with any other key is refused).
_OWN_KEYS = {
    "ObjectNode": frozenset({"content"}), "TreeNode": frozenset({"__reduce__", "content"}),
    "FunctionNode": frozenset(), "TypeNode": frozenset(), "DictNode": frozenset({"content", "key_types"}),
    "ListNode": frozenset({"content"}), "TupleNode": frozenset({"content"}),
    "JsonNode": frozenset({"content", "is_json"}), "NdArrayNode": frozenset({"type", "file"}),
    "TreeArrayNode": frozenset({"type", "content", "shape"}),
    "DTypeNode": frozenset({"content"}),
}
_KEYS = {loader: keys | _COMMON for loader, keys in _OWN_KEYS.items()}
_ROOT_KEYS = frozenset({"protocol", "_skops_version"})

MAX_SCHEMA_BYTES = 256 << 20
MAX_UNPACKED_BYTES = 2 << 30
MAX_DEPTH = 64


class _Refused(Exception):
    """One node outside the allow-list: ``path`` in the object tree and what is wrong."""

    def __init__(self, path: str, what: str):
        super().__init__(f"{path.lstrip('.') or '(top level)'}: {what}")


def _kind(node: dict) -> str:
    return f"{node['__loader__']} {node['__module__']}.{node['__class__']}"


class _Walker:
    """Walks schema.json depth-first; raises :class:`_Refused` at the first node outside the allow-list."""

    def __init__(self, members: set[str]):
        self.members = members
        self.types: set[str] = set()
        self.seen: dict[int, str] = {}  # __id__ -> kind of its first node (skops reuses that node for later ones)

    def node(self, node: object, path: str, depth: int, role: str = "value") -> None:
        if depth > MAX_DEPTH:
            raise _Refused(path, f"nested deeper than {MAX_DEPTH} levels")
        if type(node) is not dict:
            raise _Refused(path, f"a {type(node).__name__} where a node was expected")
        loader, module, name = node.get("__loader__"), node.get("__module__"), node.get("__class__")
        if type(loader) is not str or type(module) is not str or type(name) is not str:
            raise _Refused(path, "a node without __loader__, __module__ and __class__ strings")
        type_name = f"{module}.{name}"
        kind = f"{loader} {type_name}"
        if loader not in ALLOWED:
            reason = REFUSED.get(loader)
            if loader == "MethodNode" and type(node.get("content")) is dict:
                kind = f"{kind}.{node['content'].get('func')}"
            raise _Refused(path, f"{kind} ({reason}) is never loaded by KiMap" if reason
                           else f"unknown skops loader {loader!r} ({type_name})")
        if type_name not in ALLOWED[loader]:
            raise _Refused(path, f"{loader} of {type_name} is not on KiMap's allow-list")
        if (role == "key type") != (loader == "TypeNode"):
            raise _Refused(path, f"{kind} where {'a dict key type' if role == 'key type' else 'a value'} was expected")
        if role == "tree array" and (loader != "NdArrayNode" or node.get("type") != "json"):
            raise _Refused(path, f"{kind} where an object array of trees was expected")
        if role == "tree" and (loader != "ObjectNode" or type_name != TREE_ESTIMATOR_TYPE):
            raise _Refused(path, f"{kind} where a {TREE_ESTIMATOR_TYPE} was expected")
        keys = _KEYS["TreeArrayNode" if role == "tree array" else loader]
        extra = node.keys() - keys
        if extra and (depth > 0 or extra - _ROOT_KEYS):
            raise _Refused(path, f"{kind} has unexpected key(s) {', '.join(sorted(map(str, extra - _ROOT_KEYS)))}")
        saved_id = node.get("__id__")
        if saved_id is not None:
            if type(saved_id) is not int:
                raise _Refused(path, f"{kind} has a non-integer __id__")
            first = self.seen.setdefault(saved_id, kind)
            if first != kind:  # skops would put the first node with this __id__ here
                raise _Refused(path, f"{kind} reuses the __id__ of a {first}")
        self.types.add(type_name)
        getattr(self, loader)(node, path, depth, role)

    def _child(self, node: dict, key: str, path: str, depth: int, kind: str | None = None) -> dict:
        if key not in node:
            raise _Refused(path, f"{_kind(node)} has no {key}")
        child = node[key]
        if kind is not None and (not isinstance(child, dict) or child.get("__loader__") != kind):
            raise _Refused(path, f"{_kind(node)}: its {key} must be a {kind}")
        return child

    def ObjectNode(self, node: dict, path: str, depth: int, role: str) -> None:
        if "content" in node:  # the estimator's attributes: a dict of attribute name -> value
            owner = f"{node['__module__']}.{node['__class__']}"
            self.node(self._child(node, "content", path, depth, "DictNode"), path, depth + 1,
                      "boosting attributes" if owner == BOOSTING_TYPE else "value")

    def TreeNode(self, node: dict, path: str, depth: int, role: str) -> None:
        reduce = self._child(node, "__reduce__", path, depth)
        if not isinstance(reduce, dict) or set(reduce) != {"args"}:
            raise _Refused(path, f"{_kind(node)}: __reduce__ must hold only args")
        self.node(self._child(reduce, "args", path, depth, "TupleNode"), f"{path}.__reduce__.args", depth + 1)
        self.node(self._child(node, "content", path, depth, "DictNode"), path, depth + 1)

    def FunctionNode(self, node: dict, path: str, depth: int, role: str) -> None:
        pass

    def TypeNode(self, node: dict, path: str, depth: int, role: str) -> None:
        pass

    def DictNode(self, node: dict, path: str, depth: int, role: str) -> None:
        content = self._child(node, "content", path, depth)
        if not isinstance(content, dict):
            raise _Refused(path, f"{_kind(node)}: content must be a mapping")
        key_types = self._child(node, "key_types", path, depth, "ListNode")
        self.node(key_types, f"{path}.<key types>", depth + 1, role="key types")
        if len(key_types.get("content", ())) != len(content):
            raise _Refused(path, f"{_kind(node)}: one key type per key is expected")
        for key, value in content.items():
            self.node(value, f"{path}.{key}" if key.isidentifier() else f"{path}[{key!r}]", depth + 1,
                      "tree array" if role == "boosting attributes" and key == "estimators_" else "value")

    def ListNode(self, node: dict, path: str, depth: int, role: str) -> None:
        content = self._child(node, "content", path, depth)
        if not isinstance(content, list):
            raise _Refused(path, f"{_kind(node)}: content must be a list")
        if role == "tree row" and len(content) != 1:
            raise _Refused(path, f"{_kind(node)}: a row of boosting trees must hold one tree")
        inner = {"key types": "key type", "tree row": "tree"}.get(role, "value")
        for index, value in enumerate(content):
            self.node(value, f"{path}[{index}]", depth + 1, inner)

    TupleNode = ListNode

    def JsonNode(self, node: dict, path: str, depth: int, role: str) -> None:
        content = self._child(node, "content", path, depth)
        if node.get("is_json", True) is not True or type(content) is not str or content.lstrip()[:1] in ("[", "{"):
            raise _Refused(path, "JsonNode: content must be the JSON text of a number, text, bool or null")

    def NdArrayNode(self, node: dict, path: str, depth: int, role: str) -> None:
        if role == "tree array":  # a GradientBoostingRegressor's estimators_: rows of one DecisionTreeRegressor each
            content = self._child(node, "content", path, depth)
            if node.get("__class__") != "ndarray" or not isinstance(content, list) or not content:
                raise _Refused(path, f"{_kind(node)}: must be a non-empty numpy.ndarray of tree rows")
            for index, row in enumerate(content):
                if not isinstance(row, dict) or row.get("__loader__") != "ListNode":
                    raise _Refused(f"{path}[{index}]", "a row of boosting trees must be a list")
                self.node(row, f"{path}[{index}]", depth + 1, "tree row")
            shape = self._child(node, "shape", path, depth, "TupleNode")
            self.node(shape, f"{path}.<shape>", depth + 1)
            return
        file = node.get("file")
        if node.get("type") != "numpy" or not isinstance(file, str) or file not in self.members \
                or not file.endswith(".npy"):
            raise _Refused(path, f"{_kind(node)}: must name a .npy member of the file (object arrays are refused)")

    def DTypeNode(self, node: dict, path: str, depth: int, role: str) -> None:
        array = self._child(node, "content", path, depth, "NdArrayNode")
        if array.get("__module__") != "numpy" or array.get("__class__") != "ndarray":
            raise _Refused(path, f"{_kind(node)}: its content must be a numpy.ndarray")
        self.node(array, f"{path}.<dtype array>", depth + 1)


def audit_model_file(data: bytes, where: str, name: str = "model.skops") -> list[str]:
    """Check every node of the skops file ``data`` (nothing is instantiated) and return the ``module.class`` names
    it holds, all on KiMap's allow-list, to pass to skops as ``trusted``. Raises one-line ModelError otherwise."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        raise ModelError(f"{name} is not a skops (zip) file", input_name=where) from None
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        raise ModelError(f"{name} holds two members with the same name", input_name=where,
                         hint="only bundles written by `kimap train` can be loaded")
    sizes = {info.filename: info.file_size for info in infos}
    if "schema.json" not in sizes:
        raise ModelError(f"{name} has no schema.json (not a skops file)", input_name=where)
    if sizes["schema.json"] > MAX_SCHEMA_BYTES or sum(sizes.values()) > MAX_UNPACKED_BYTES:
        raise ModelError(f"{name} unpacks to {sum(sizes.values()) / 2**30:.1f} GiB (schema "
                         f"{sizes['schema.json'] / 2**20:.0f} MiB), more than a KiMap model can hold",
                         input_name=where, hint="only bundles written by `kimap train` can be loaded")
    try:
        schema = json.loads(archive.read("schema.json"))
    except (ValueError, RecursionError, zipfile.BadZipFile, OSError):
        raise ModelError(f"{name}: schema.json is not readable JSON", input_name=where) from None
    walker = _Walker(set(names))
    try:
        if not isinstance(schema, dict) or schema.get("protocol") not in PROTOCOLS:
            raise _Refused("", f"skops protocol {schema.get('protocol') if isinstance(schema, dict) else None!r} "
                               f"(KiMap reads protocol {', '.join(map(str, sorted(PROTOCOLS)))})")
        walker.node(schema, "", 0)
    except _Refused as refused:
        raise ModelError(f"{name} refused at {refused}", input_name=where,
                         hint="nothing was loaded; only bundles written by `kimap train` can be loaded") from None
    except RecursionError:
        raise ModelError(f"{name} refused: nested too deeply", input_name=where) from None
    return sorted(walker.types)
