#!/usr/bin/env bash
# Runs ShellCheck on every shell script of the test bed: each *.sh under testbed/, and
# any file there without that extension whose first line is a bash or sh shebang (the
# Makefile's recipes are not checked). Sources are followed (-x); `source
# "$(dirname "${BASH_SOURCE[0]}")/lib.sh"` and `source "$ROOT/testbed/node.sh"` resolve
# against testbed/ and the repository's root. Fails on any finding (style and up).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
ensure_debs shellcheck
scripts=()
while IFS= read -r -d '' f; do
  if [[ "$f" == *.sh ]] || head -n1 "$f" | grep -qE '^#!.*[/ ](ba)?sh([[:space:]]|$)'; then
    scripts+=("$f")
  fi
done < <(find testbed -type f -print0 | sort -z)
(( ${#scripts[@]} )) || die "no shell scripts found under testbed/"
log "shellcheck $(shellcheck --version | awk '/^version:/ {print $2}'): ${#scripts[@]} files"
if shellcheck -x --source-path=SCRIPTDIR --source-path="$ROOT" "${scripts[@]}"; then
  echo "shellcheck: ${#scripts[@]} files checked, no findings"
else
  echo "shellcheck: ${#scripts[@]} files checked, findings above"
  exit 1
fi
