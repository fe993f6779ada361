# Helpers for the launch scripts; sourced by them, not run.

# The comment block at the top of the script that sources this.
header() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

die() { echo "$(basename "$0"): $*" >&2; exit 2; }

# The words as one shell command line, quoting only those that need it.
quoted() {
  local word line=()
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then line+=("$word")
    else line+=("${word@Q}"); fi
  done
  echo "${line[*]}"
}
