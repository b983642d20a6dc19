"""The README's Python example runs as written, and its test command is what .ci/run runs."""

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(tmp_path, monkeypatch):
    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "mixed.onnx").is_file()


def test_ci_runs_the_readme_test_command():
    readme_commands = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    test_command = next(c.strip() for c in readme_commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()
    assert os.access(ROOT / ".ci" / "run", os.X_OK)


def test_readme_lists_the_output_folder_as_the_code_does():
    """README's output-folder list is ``OUTPUT_FILES`` rendered; tests/test_compile_job.py ties that to a real job."""
    from trtmix.job.outputs import output_list

    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- output-files:begin -->\n(.*?)\n<!-- output-files:end -->", text, re.S)
    assert block, "README.md has no output-files block"
    assert block.group(1) == output_list(), "regenerate README's block with trtmix.job.outputs.output_list()"
