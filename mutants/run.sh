#!/usr/bin/env bash
# make mutants: applies each planted bug in mutants/*.patch, one at a time, to a scratch
# copy of the tree and checks that the tests the patch names fail. A mutant that does
# not compile, or that its tests let through, fails the run. Prints a table.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
# One target directory for every mutant: each rebuild is incremental.
export CARGO_TARGET_DIR="$root/target/mutants"
tar -C "$root" --exclude=./target --exclude=./.git -cf - . | tar -C "$scratch" -xf -

# MUTANT="a b" runs only those.
only=" ${MUTANT:-} "
for name in ${MUTANT:-}; do
    if [ ! -f "$root/mutants/$name.patch" ]; then
        echo "mutants: no planted bug named $name (mutants/$name.patch)" >&2
        exit 1
    fi
done
rows=()
missed=0
for patch in "$root"/mutants/*.patch; do
    name="$(basename "$patch" .patch)"
    [ "$only" != "  " ] && [[ "$only" != *" $name "* ]] && continue
    tests="$(sed -n 's/^# must fail: cargo test //p' "$patch")"
    what="$(sed -n 's/^# plants: //p' "$patch")"
    if ! (cd "$scratch" && git apply "$patch"); then
        rows+=("| $what | \`$name\` | patch does not apply | **no** |")
        missed=$((missed + 1))
        continue
    fi
    echo "== $name: $what"
    started=$(date +%s)
    # shellcheck disable=SC2086
    if ! (cd "$scratch" && cargo test --quiet --no-run ${tests%% -- *} >/dev/null 2>&1); then
        verdict="does not compile"; caught="**no**"; missed=$((missed + 1))
    elif (cd "$scratch" && RUST_LOG=off cargo test --quiet $tests >"$scratch/.out" 2>&1); then
        verdict="the tests pass"; caught="**no**"; missed=$((missed + 1))
    else
        failed="$(grep -cE '^test .* FAILED$|^---- ' "$scratch/.out")"
        verdict="fails ($(grep -E '^---- ' "$scratch/.out" | sed 's/^---- \(.*\) stdout ----/\1/' | head -3 | paste -sd ' ' -))"
        caught="yes"
        [ "$failed" -gt 0 ] || verdict="fails"
    fi
    echo "   $caught: $verdict, $(( $(date +%s) - started )) s"
    rows+=("| $what | \`$name\` | $verdict | $caught |")
    (cd "$scratch" && git apply -R "$patch")
done
echo
echo "| planted bug | patch | with it, the named tests | caught? |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
if [ "${#rows[@]}" -eq 0 ]; then
    echo "mutants: no planted bug ran (mutants/*.patch: python3 mutants/make_patches.py)"
    exit 1
fi
if [ "$missed" -gt 0 ]; then
    echo "mutants: $missed planted bug(s) NOT caught"
    exit 1
fi
echo "mutants: every planted bug caught"
