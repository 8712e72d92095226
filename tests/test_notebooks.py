"""The notebooks run: each is executed with small parameters and must raise no error.

Every notebook reads its sizes from one code cell tagged ``parameters``; the test
replaces that cell's source with the small values below (the same names, checked) and
executes the notebook in a fresh ``python3`` kernel with nbclient, from the notebooks
folder as a reader would. The committed notebooks are also checked to be executed,
error-free and of a reasonable size.
"""

import ast
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

#: Replacement source of every notebook's parameters cell: seconds instead of a minute.
SMALL_PARAMETERS = {
    "01_quickstart.ipynb": """
n_random = 60
n_points = 80
k_max = 4
random_state = 2021
""",
    "02_out_of_core_zarr.ipynb": """
n_samples = 20_000
n_features = 3
n_centers = 3
chunk_rows = 4_000
n_colors = 4
image_step = 8
""",
    "03_distributed.ipynb": """
cluster_config = "../cluster_configs/local.yaml"
n_samples = 20_000
n_features = 3
n_clusters = 4
chunk_rows = 4_000
""",
    "04_clustering_embeddings.ipynb": """
n_samples = 5_000
n_features = 32
n_topics = 6
kappa = 4.0
n_duplicates = 40
chunk_rows = 1_000
k_values = [2, 4, 6, 8, 12]
""",
}

#: Seconds a cell may run before it counts as hung (the small parameters take seconds).
CELL_TIMEOUT = 600
MAX_BYTES = 1_500_000


def read(name: str):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def parameters_cell(notebook):
    cells = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(cells) == 1, "a notebook needs exactly one cell tagged 'parameters'"
    assert cells[0].cell_type == "code"
    return cells[0]


def assigned_names(source: str) -> set[str]:
    return {
        target.id
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def test_every_notebook_is_tested():
    assert sorted(path.name for path in NOTEBOOKS.glob("*.ipynb")) == sorted(SMALL_PARAMETERS)


@pytest.mark.parametrize("name", sorted(SMALL_PARAMETERS))
def test_committed_notebook_is_executed_and_clean(name):
    notebook = read(name)
    nbformat.validate(notebook)
    assert (NOTEBOOKS / name).stat().st_size < MAX_BYTES
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code), "commit it executed"
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), (
        "commit it executed once, top to bottom"
    )
    errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert not errors
    assert any("image/png" in out.get("data", {}) for cell in code for out in cell.outputs)


@pytest.mark.parametrize("name", sorted(SMALL_PARAMETERS))
def test_small_parameters_replace_all_parameters(name):
    cell = parameters_cell(read(name))
    assert assigned_names(SMALL_PARAMETERS[name]) == assigned_names(cell.source)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALL_PARAMETERS))
def test_notebook_runs(name):
    notebook = read(name)
    parameters_cell(notebook).source = SMALL_PARAMETERS[name].strip()
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
