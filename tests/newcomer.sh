#!/usr/bin/env bash
# The newcomer's walk through the README, verbatim, from a clean clone:
# the README's config block saved as mesh.yaml (as its text says), then
# every command of every `sh` block after the first, in order, exactly as
# written. A command that starts a server (`--listen ADDR`) runs in the
# background until its port answers; every other command must exit 0.
# Then what the README says they show is checked: the certificates exist,
# the echo server answers, `meshctl check` passes, `meshctl route` sends a
# tester to reviews-v2.
#
# The first block's test command runs here too: this clone has nothing
# beside it (no shared directory), as a user's has not, so it proves the tests
# pass on a fresh clone. (`.ci/run` runs the demo, and checks what it shows.)
#
# Builds share this tree's target directory, so only the sources are fresh.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
  # Servers run in their own process groups (cargo and the example in it).
  for p in "${pids[@]}"; do kill -- "-$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

git clone -q "$here" "$work/clone"
cd "$work/clone"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"

# The README's test command, from the first sh block, as written.
test_cmd=$(awk '/^```sh$/ { inside = 1; next } /^```$/ && inside { exit } inside' README.md \
  | sed 's/ *#.*//' | grep -m1 'cargo test')
test -d "$work/shared" && { echo "the clone has a shared/ beside it: not a fresh clone"; exit 1; }
echo "\$ $test_cmd"
$test_cmd >"$work/test.log" 2>&1 || { tail -80 "$work/test.log"; echo "FAILED on a fresh clone: $test_cmd"; exit 1; }
grep -E '^test result:' "$work/test.log" | tail -3

# The first ```yaml block is the config the later commands call mesh.yaml.
awk '/^```yaml$/ { inside = 1; next } /^```$/ && inside { exit } inside' README.md > mesh.yaml
test -s mesh.yaml || { echo "README: no yaml block to save as mesh.yaml"; exit 1; }

# Every sh block after the first, continuation lines joined, comments cut.
python3 - README.md > "$work/commands" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
blocks = re.findall(r"^```sh\n(.*?)^```$", text, re.S | re.M)
for block in blocks[1:]:
    for command in re.sub(r"\\\n\s*", " ", block).splitlines():
        command = re.sub(r"\s+#.*$", "", command).strip()
        if command:
            print(command)
PY
test -s "$work/commands" || { echo "README: no commands after the first block"; exit 1; }

listening() {
  for _ in $(seq 600); do
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listening on $1:$2 after: $3"; cat "$work/log"; exit 1
}

n=0
while IFS= read -r command; do
  n=$((n + 1))
  echo "\$ $command"
  if [[ "$command" =~ --listen\ ([0-9.]+):([0-9]+) ]]; then
    host=${BASH_REMATCH[1]}; port=${BASH_REMATCH[2]}
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
      echo "$host:$port is taken before the README's command runs: free it first"; exit 1
    fi
    setsid bash -c "$command" </dev/null >>"$work/log" 2>&1 &
    pids+=($!)
    listening "$host" "$port" "$command"
  else
    bash -c "$command" </dev/null > "$work/out.$n" 2>>"$work/log" || {
      echo "FAILED: $command"; cat "$work/out.$n" "$work/log"; exit 1
    }
    cat "$work/out.$n"
  fi
done < "$work/commands"

# What the README says the commands show.
test -s certs/ca.pem && test -s certs/reviews.pem && test -s certs/productpage-key.pem
curl -sf http://127.0.0.1:9003/ratings/1 -o /dev/null \
  || { echo "the README's echo server does not answer"; cat "$work/log"; exit 1; }
route=$(grep -l 'testers-to-v2' "$work"/out.* || true)
if [ -z "$route" ] || ! grep -q 'reviews-v2' "$route"; then
  echo "meshctl route: expected the tester to go by testers-to-v2 to reviews-v2"; exit 1
fi
echo "ok: the README, verbatim, from a clean clone ($n commands)"
