"""Prints the README's quick-start commands, one per line, as written.

CI runs exactly these, so the README's first hour cannot rot: the shell
blocks under the "## Quick start" heading, up to the next heading.
"""
import re
import sys


def quick_start_commands(readme: str) -> list[str]:
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", section, flags=re.S)
    # A block may continue a line with a backslash; CI runs it as one line.
    return [block.replace("\\\n", " ").strip() for block in blocks]


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        print("\n".join(quick_start_commands(f.read())))
