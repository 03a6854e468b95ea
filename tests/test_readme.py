"""The README's Python snippets import what exists (every `import` line of every python block runs)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_readme_import_line_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()
             if re.match(r"\s*(from fspad_hf|import fspad_hf|from fspad_hf\.)", line)]
    assert len(lines) >= 3
    for line in lines:
        exec(line.split("#")[0], {})  # noqa: S102  (our own README)
