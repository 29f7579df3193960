"""``tox -e build``: every distribution built, checked and installed as a user gets it.

For each distribution (``core``, every ``plugins/*/pyproject.toml``, the
plugin template), in this order:

1. ``python -m build``: the sdist, then the wheel built *from the sdist*, so a
   file the sdist leaves out is missing from the wheel too;
2. ``twine check --strict`` (the metadata and README as PyPI renders them) and
   ``check-wheel-contents`` against the distribution's ``src/`` (a module left
   out of the wheel, or one too many, fails it);
3. this script's own checks of what those tools do not know: a ``py.typed`` in
   every package, ``__version__`` equal to the distribution's version, and a
   plugin's dependency on the core bounded on both sides.

Then it makes a fresh venv, installs the built wheels there (not the source
tree; their dependencies from the package index, so an undeclared one is
missing) and runs ``smoke.py`` in it, outside the repository.

Usage: ``python tests/dists/check.py --out DIR [--only NAME ...]``. Every
problem is reported, and the exit status is 1 when there is one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import venv
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMOKE = Path(__file__).with_name("smoke.py")
CORE = "microbroker"


@dataclass
class Dist:
    """A distribution of this repository, as its pyproject.toml describes it."""

    folder: Path
    name: str
    version: str
    packages: list[str]  # the import packages its wheel ships (src/<package>)
    entry_points: dict[str, str]  # the ``microbroker`` entry points

    @property
    def label(self) -> str:
        return str(self.folder.relative_to(ROOT))


def discover() -> list[Dist]:
    """The core, every plugin (found by glob: a new one needs no edit here) and the template."""
    folders = [
        ROOT / "core",
        *sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml")),
        ROOT / "examples" / "plugin-template",
    ]
    dists = []
    for folder in folders:
        pyproject = tomllib.loads((folder / "pyproject.toml").read_text())
        project = pyproject["project"]
        wheel = pyproject.get("tool", {}).get("hatch", {}).get("build", {}).get("targets", {})
        declared = wheel.get("wheel", {}).get("packages")
        packages = (
            [Path(p).name for p in declared]
            if declared
            else [p.name for p in (folder / "src").iterdir() if (p / "__init__.py").exists()]
        )
        dists.append(
            Dist(
                folder,
                project["name"],
                project["version"],
                sorted(packages),
                dict(project.get("entry-points", {}).get("microbroker", {})),
            )
        )
    return dists


class Failures:
    """Collects what failed, so that one run reports every problem."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        print(f"FAIL: {message}", flush=True)
        self.messages.append(message)

    def report(self) -> int:
        if self.messages:
            print(f"\n{len(self.messages)} problem(s):", flush=True)
            for message in self.messages:
                print(f"  - {message}", flush=True)
            return 1
        return 0


def run(args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command; return its output, or raise with it."""
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(args)}` exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done.stdout + done.stderr


def tool(name: str) -> str:
    """A console script of the tox env this runs in."""
    return str(Path(sys.executable).with_name(name))


def build(dist: Dist, out: Path, failures: Failures) -> tuple[Path, Path] | None:
    target = out / dist.folder.name
    try:
        run([sys.executable, "-m", "build", "--outdir", str(target), str(dist.folder)])
    except RuntimeError as exc:
        failures.add(f"{dist.label}: the build failed: {exc}")
        return None
    stem = re.sub(r"[-_.]+", "_", dist.name).lower()
    wheels = list(target.glob(f"{stem}-{dist.version}-*.whl"))
    sdists = list(target.glob(f"{stem}-{dist.version}.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        failures.add(
            f"{dist.label}: expected one wheel and one sdist, got {sorted(target.iterdir())}"
        )
        return None
    return sdists[0], wheels[0]


def check_tools(dist: Dist, sdist: Path, wheel: Path, failures: Failures) -> None:
    try:
        run([tool("twine"), "check", "--strict", str(sdist), str(wheel)])
    except RuntimeError as exc:
        failures.add(f"{dist.label}: twine check: {exc}")
    try:
        run(
            [
                tool("check-wheel-contents"),
                "--no-config",
                "--toplevel",
                ",".join(dist.packages),
                "--src-dir",
                str(dist.folder / "src"),
                str(wheel),
            ]
        )
    except RuntimeError as exc:
        failures.add(f"{dist.label}: check-wheel-contents: {exc}")


def check_contents(dist: Dist, sdist: Path, wheel: Path, failures: Failures) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = HeaderParser().parsestr(archive.read(info).decode())
        entry_points = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
        entry_text = archive.read(entry_points).decode() if entry_points else ""
        sources = {n: archive.read(n).decode() for n in names if n.endswith("/__init__.py")}
    for package in dist.packages:
        if f"{package}/py.typed" not in names:
            failures.add(f"{dist.label}: the wheel has no {package}/py.typed (PEP 561)")
        found = re.search(
            r"^__version__\s*=\s*['\"]([^'\"]+)['\"]",
            sources.get(f"{package}/__init__.py", ""),
            re.M,
        )
        if found and found.group(1) != dist.version:
            failures.add(
                f"{dist.label}: {package}.__version__ is {found.group(1)!r}, the distribution "
                f"{dist.version!r}: bump both"
            )
    if metadata["Name"] != dist.name or metadata["Version"] != dist.version:
        failures.add(f"{dist.label}: the wheel says {metadata['Name']} {metadata['Version']}")
    for name, target in dist.entry_points.items():
        if f"{name} = {target}" not in entry_text:
            failures.add(f"{dist.label}: the wheel lacks the entry point {name} = {target}")
    if dist.name != CORE:
        requirement = next(
            (
                r
                for r in metadata.get_all("Requires-Dist") or []
                if re.match(rf"{CORE}\b(?![-_.])", r) and "extra ==" not in r
            ),
            "",
        )
        if not (re.search(r">=|~=|==", requirement) and re.search(r"<|~=|==", requirement)):
            failures.add(
                f"{dist.label}: its dependency on {CORE} must be a range with an upper bound "
                f"(a release whose plugin API it supports), not {requirement or 'missing'!r}"
            )
    with tarfile.open(sdist) as archive:
        members = {m.name.split("/", 1)[1] for m in archive.getmembers() if "/" in m.name}
    for required in ("pyproject.toml", "README.md"):
        if required not in members:
            failures.add(f"{dist.label}: the sdist has no {required}")


def make_venv(where: Path) -> Path:
    if where.exists():
        shutil.rmtree(where)
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    return where / ("Scripts" if os.name == "nt" else "bin") / "python"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where the dists and venv go")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="only this distribution (repeatable), besides the core that every other needs",
    )
    args = parser.parse_args()
    failures = Failures()
    out: Path = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    dists_dir = out / "dist"
    dists_dir.mkdir(parents=True)

    dists = discover()
    if args.only:
        unknown = set(args.only) - {d.name for d in dists}
        if unknown:
            parser.error(f"no distribution named {', '.join(sorted(unknown))}")
        dists = [d for d in dists if d.name == CORE or d.name in args.only]
    print("distributions:", ", ".join(f"{d.name} {d.version} ({d.label})" for d in dists))
    wheels: dict[str, Path] = {}
    for dist in dists:
        started = time.monotonic()
        built = build(dist, dists_dir, failures)
        if built is None:
            continue
        sdist, wheel = built
        print(f"built {sdist.name} and {wheel.name} in {time.monotonic() - started:.0f} s")
        check_tools(dist, sdist, wheel, failures)
        check_contents(dist, sdist, wheel, failures)
        wheels[dist.name] = wheel
    if failures.messages:
        return failures.report()

    # A fresh venv, as a user's: the wheels, their declared dependencies, nothing else.
    started = time.monotonic()
    python = make_venv(out / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # The suite needs pytest: the core's ``conformance`` extra, as the docs tell users.
    requirements = [
        f"{wheels[CORE]}[conformance]",
        *(str(w) for n, w in wheels.items() if n != CORE),
    ]
    try:
        run([str(python), "-m", "pip", "install", "--quiet", *requirements], env=env)
    except RuntimeError as exc:
        failures.add(f"installing the wheels in a fresh venv: {exc}")
        return failures.report()
    print(f"installed {len(wheels)} wheels in a fresh venv in {time.monotonic() - started:.0f} s")

    # Outside the repository, with nothing of it on sys.path: only what the wheels installed.
    work = out / "smoke"
    work.mkdir()
    manifest = work / "dists.json"
    manifest.write_text(
        json.dumps(
            [
                {
                    "name": d.name,
                    "version": d.version,
                    "packages": d.packages,
                    "entry_points": d.entry_points,
                }
                for d in dists
            ]
        )
    )
    smoke = work / SMOKE.name
    shutil.copy(SMOKE, smoke)
    env.pop("MICRO_BROKER", None)
    env.pop("MICRO_BROKER_ADDRESS", None)
    env["MICRO_REGISTRY_ADDRESS"] = str(work / "registry")  # the http broker's, private
    done = subprocess.run(
        [str(python), "-I", "-u", str(smoke), str(manifest), str(ROOT)],
        cwd=work,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        failures.add(f"the smoke test in the fresh venv failed (exit {done.returncode}; above)")
    return failures.report()


if __name__ == "__main__":
    sys.exit(main())
