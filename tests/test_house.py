"""The house: each genlab module imports only modules of its own layer or of lower ones (the
layers are named here, and only here), no modules import each other in a circle, only the
diffusion family imports diffusers, and no module outgrows 450 lines."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Bottom to top. A module belongs to the layer of the longest prefix that names it.
LAYERS = [
    (  # what everything stands on: no genlab import but the package root and one another
        "foundations",
        "genlab genlab.errors genlab.images genlab.files genlab.interrupts genlab.background "
        "genlab.distributed genlab.ema genlab.device genlab.optim genlab.augment genlab.losses",
    ),
    (  # configs, checkpoints, locks and records: what runs store and read back
        "stored state",
        "genlab.trust genlab.config genlab.checkpoint genlab.lock genlab.record genlab.logger "
        "genlab.guard",
    ),
    ("data and metrics", "genlab.data genlab.metrics"),
    (
        "run folders",
        "genlab.run_folder genlab.loading genlab.callbacks genlab.search genlab.search_space",
    ),
    ("model families", "genlab.models"),
    (  # what drives a family through the contract
        "drivers",
        "genlab.training_state genlab.progress genlab.trainer genlab.evaluation genlab.sampling "
        "genlab.export",
    ),
    ("commands", "genlab.commands genlab.cli genlab.__main__"),
]
LEVEL = {prefix: i for i, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes.split()}
# the only modules that import diffusers: the diffusion family's
# the noise-to-image families (diffusion, flow): their U-Net, schedules and exported pipelines
DIFFUSERS = {
    "genlab.models.diffusion",
    "genlab.models.flow",
    "genlab.models.flow_solvers",
    "genlab.models.noise_to_image",
    "genlab.models.solvers",
    "genlab.models.unet",
}
MAX_LINES = 450


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "genlab").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it (inside functions and type-checking blocks
    too): `from genlab.models import GAN` imports genlab.models, `from genlab.models import
    finetune` genlab.models.finetune."""
    names, known = set(), modules()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names}
            names.update((submodules & known.keys()) or {node.module})
    return names


def layer(module: str) -> int:
    prefix = max((p for p in LEVEL if module == p or module.startswith(p + ".")), key=len)
    return LEVEL[prefix]


def graph() -> dict[str, set[str]]:
    """genlab's modules and the genlab modules each imports."""
    found = modules()
    return {m: {i for i in imports(p) if i in found and i != m} for m, p in found.items()}


def test_every_module_has_a_layer():
    assert all(any(m == p or m.startswith(p + ".") for p in LEVEL) for m in modules())


def test_no_import_runs_up_a_layer():
    upward = [
        f"{m} ({LAYERS[layer(m)][0]}) imports {i} ({LAYERS[layer(i)][0]})"
        for m, targets in graph().items()
        for i in sorted(targets)
        if layer(i) > layer(m)
    ]
    assert not upward, "\n".join(upward)


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_modules_import_each_other_in_a_circle():
    assert circles(graph()) == []


def test_the_circle_finder_finds_a_circle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(edges) == [["a", "b", "c"]]


def test_only_the_diffusion_family_imports_diffusers():
    importers = {
        m for m, p in modules().items() if any(i.split(".")[0] == "diffusers" for i in imports(p))
    }
    assert importers == DIFFUSERS


@pytest.mark.parametrize("folder", ["genlab", "scripts"])
def test_no_module_is_over_450_lines(folder):
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / folder).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these modules: {long}"
