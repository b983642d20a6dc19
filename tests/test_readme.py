"""The READMEs agree with the code: the Python example runs as written, the test command is what .ci/run runs, and
every command a README names (a benchmark script with its flags, a ``trtmix`` command line) exists and parses."""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READMES = ("README.md", "benchmarks/README.md")
# A value that stands for one the user chooses: N, DIR, HOST:PORT, KEY=VALUE, FILE.py:FUNCTION, ...
PLACEHOLDER = re.compile(r"\.\.\.|[A-Z][A-Z0-9_]*(?:\.py)?(?:[:=][A-Z][A-Z0-9_]*)*")


def readme_commands(text: str) -> list[str]:
    """Every command line in a README's ``text``: each inline code span, and each command of a ``bash`` block."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#\s.*", "", line)  # a comment
            commands += [part.strip() for part in line.split("&&") if part.strip()]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return commands + re.findall(r"`([^`\n]+)`", prose)


def _words(command: str) -> list[str]:
    """The words of a usage line, optional brackets dropped (``[--json]`` → ``--json``), ``\\|`` read as ``|``."""
    text = command.replace("\\|", "|").replace("[", " ").replace("]", " ")
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def benchmark_commands(texts: dict[str, str]) -> list[tuple[str, str, list[str]]]:
    """(where, script path, its arguments) for every command in the READMEs ``texts`` that names a benchmark script.

    ``python X.py ...`` and ``benchmarks/X.py ...`` name a script anywhere; a bare ``X.py`` (benchmarks/ implied)
    does in benchmarks/README.md, whose table lists the scripts so, and with arguments (``gain.py --spread``) in both.
    """
    found = []
    for name, text in texts.items():
        for command in readme_commands(text):
            words = _words(command)
            if words and re.fullmatch(r"(?:\S*/)?python3?", words[0]):
                if len(words) < 2 or not words[1].endswith(".py"):
                    continue  # python -c, python -m
                path, words = words[1], words[1:]
            elif (
                words
                and re.fullmatch(r"(?:benchmarks/)?\w+\.py", words[0])
                and (words[0].startswith("benchmarks/") or name.startswith("benchmarks/") or len(words) > 1)
            ):
                path = words[0] if words[0].startswith("benchmarks/") else f"benchmarks/{words[0]}"
            else:
                continue
            found.append((f"{name}: `{command}`", path, words[1:]))
    return found


def trtmix_commands(texts: dict[str, str]) -> list[tuple[str, list[str]]]:
    """(where, the words after ``trtmix``) for every ``trtmix`` command line in the READMEs ``texts``."""
    found = []
    for name, text in texts.items():
        for command in readme_commands(text):
            words = _words(command)
            if words and re.fullmatch(r"(?:\S*/)?trtmix", words[0]):
                found.append((f"{name}: `{command}`", words[1:]))
    return found


def _choices(value: str) -> list[str]:
    """``auto|dynamo`` and ``{tensorrt,ort-cpu}`` → each choice; placeholders (``N``, ``...``) → none."""
    choices = value[1:-1].split(",") if value.startswith("{") and value.endswith("}") else value.split("|")
    return [c for c in choices if c and not PLACEHOLDER.fullmatch(c)]


def flag_problems(parser: argparse.ArgumentParser, words: list[str], outer=None) -> list[str]:
    """Each flag in ``words`` that ``parser`` (or ``outer``) does not have, or whose value it refuses."""
    problems = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-") or word == "-":
            continue  # a positional argument (the model, the data)
        flag, has_value, inline = word.partition("=")
        action = parser._option_string_actions.get(flag)
        if action is None and outer is not None:
            action = outer._option_string_actions.get(flag)
        if action is None:
            problems.append(f"{flag}: no such flag")
            continue
        values = [inline] if has_value else []
        if not has_value and action.nargs != 0:
            limit = None if action.nargs in ("+", "*") else action.nargs if isinstance(action.nargs, int) else 1
            while i < len(words) and not re.match(r"--?[A-Za-z]", words[i]) and (limit is None or len(values) < limit):
                values.append(words[i])
                i += 1
        for value in values:
            for choice in _choices(value):
                try:
                    converted = action.type(choice) if callable(action.type) else choice
                except (argparse.ArgumentTypeError, ValueError, TypeError) as err:
                    problems.append(f"{flag} {choice}: refused ({err})")
                    continue
                if action.choices is not None and converted not in action.choices:
                    problems.append(f"{flag} {choice}: not one of {', '.join(map(str, action.choices))}")
    return problems


def trtmix_problems(found: list[tuple[str, list[str]]]) -> list[str]:
    """What ``trtmix.cli.build_parser()`` refuses in each command: an unknown command, flag or value."""
    from trtmix.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    problems = []
    for where, words in found:
        while words and words[0].startswith("-"):  # trtmix -q COMMAND
            problems += [f"{where}: {p}" for p in flag_problems(parser, words[:1])]
            words = words[1:]
        if not words or PLACEHOLDER.fullmatch(words[0]):  # `trtmix COMMAND --help`
            problems += [f"{where}: {p}" for p in flag_problems(parser, words[1:])]
        elif words[0] not in commands:
            problems.append(f"{where}: no command {words[0]!r} (commands: {', '.join(commands)})")
        else:
            problems += [f"{where}: {p}" for p in flag_problems(commands[words[0]], words[1:], parser)]
    return problems


# Run in a fresh interpreter: a benchmark script puts benchmarks/ on sys.path when imported.  Each script builds its
# parser in main(); main() runs with ArgumentParser.parse_args replaced by a trap, so the script's own parser is caught
# before the script does anything, and each README command is checked flag by flag and, where it has no placeholder
# (``--units N``), parsed whole (every ``a|b`` choice in turn).
_PARSE_WITH_THE_SCRIPTS_PARSERS = r"""
import argparse, contextlib, importlib.util, io, itertools, json, sys
sys.path.insert(0, sys.argv[1])
from tests.test_readme import PLACEHOLDER, flag_problems

class Caught(Exception):
    pass

def trap(self, args=None, namespace=None):
    raise Caught(self)

parse_args = argparse.ArgumentParser.parse_args
answers = {}
for path, argvs in json.load(sys.stdin).items():
    argparse.ArgumentParser.parse_args = trap
    try:
        spec = importlib.util.spec_from_file_location("readme_" + path.replace("/", "_")[:-3], path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        module.main()
        answers[path] = {"": ["its main() returned without parsing any arguments"]}
        continue
    except Caught as caught:
        parser = caught.args[0]
    except BaseException as err:
        answers[path] = {"": [f"its main() failed before parsing arguments: {err!r}"]}
        continue
    finally:
        argparse.ArgumentParser.parse_args = parse_args
    answers[path] = {}
    for argv in argvs:
        problems = flag_problems(parser, argv)
        if not any(PLACEHOLDER.fullmatch(word) for word in argv):
            choices = [[c for c in word.split("|") if c] for word in argv if word != "|"]
            for variant in itertools.product(*choices):
                stderr = io.StringIO()
                try:
                    with contextlib.redirect_stderr(stderr):
                        parse_args(parser, list(variant))
                except SystemExit:
                    error = stderr.getvalue().strip().splitlines()[-1].split("error: ", 1)[-1]
                    problems.append(" ".join(variant) + ": " + error)
        answers[path][" ".join(argv)] = problems
print(json.dumps(answers))
"""


def benchmark_problems(found: list[tuple[str, str, list[str]]]) -> list[str]:
    """What is wrong with each benchmark command: its script does not exist, or its parser refuses the arguments."""
    problems = [f"{where}: {path} does not exist" for where, path, _ in found if not (ROOT / path).is_file()]
    argvs: dict[str, list[list[str]]] = {}
    for _, path, argv in found:
        if argv and (ROOT / path).is_file() and argv not in argvs.setdefault(path, []):
            argvs[path].append(argv)
    if not argvs:
        return problems
    result = subprocess.run([sys.executable, "-c", _PARSE_WITH_THE_SCRIPTS_PARSERS, str(ROOT)],
                            input=json.dumps(argvs), capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.splitlines()[-1])
    for where, path, argv in found:
        if argv and path in answers:
            refused = answers[path].get("", []) + answers[path].get(" ".join(argv), [])
            problems += [f"{where}: {path}: {p}" for p in refused]
    return problems


def _readmes() -> dict[str, str]:
    return {name: (ROOT / name).read_text() for name in READMES}


def test_readme_trtmix_commands_parse():
    """Every ``trtmix`` line the READMEs show names a real command, and trtmix.cli.build_parser() takes its flags."""
    found = trtmix_commands(_readmes())
    assert len(found) >= 10 and any(words[:1] == ["compile"] for _, words in found), found
    problems = trtmix_problems(found)
    assert not problems, "\n".join(problems)


def test_readme_benchmark_commands_exist_and_parse():
    """Every benchmark command the READMEs give as a table's source names a script in benchmarks/, and that script's
    own argument parser takes its flags and values."""
    found = benchmark_commands(_readmes())
    scripts = {path for _, path, argv in found if argv}
    assert len(found) >= 20 and {"benchmarks/paper.py", "benchmarks/real_graphs.py"} <= scripts, found
    problems = benchmark_problems(found)
    assert not problems, "\n".join(sorted(set(problems)))


def test_the_command_checks_fail_on_a_missing_script_flag_or_value():
    """A README naming a script, command, flag or value that does not exist makes the checks above fail."""
    readme = (
        "From `python benchmarks/no_such_script.py --fast` and `paper.py --quick --no-such-flag`, and\n"
        "`zoo.py [--size real\\|huge]`; `trtmix compile m.onnx --max-drop 1% --ordering kl|nonsense --frontier N`,\n"
        "`trtmix compile --frontier two --nonsense`, `trtmix frobnicate`.\n"
    )
    found = benchmark_commands({"README.md": readme})
    assert [(path, argv) for _, path, argv in found] == [
        ("benchmarks/no_such_script.py", ["--fast"]),
        ("benchmarks/paper.py", ["--quick", "--no-such-flag"]),
        ("benchmarks/zoo.py", ["--size", "real|huge"]),
    ]
    problems = benchmark_problems(found)
    assert any("no_such_script.py does not exist" in p for p in problems), problems
    assert any("paper.py: --no-such-flag: no such flag" in p for p in problems), problems
    assert any("zoo.py: --size huge: not one of" in p for p in problems), problems
    assert any("zoo.py: --size huge: argument --size: invalid choice" in p for p in problems), problems
    assert any("paper.py: --quick --no-such-flag: unrecognized arguments: --no-such-flag" in p for p in problems)
    assert len(problems) == 5, problems
    problems = trtmix_problems(trtmix_commands({"README.md": readme}))
    wrong = ["--ordering nonsense: not one of", "--frontier two: refused", "--nonsense: no such flag", "no command"]
    assert len(problems) == 4 and all(any(w in p for p in problems) for w in wrong), problems


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
