#!/usr/bin/env bash
# benches/fuzz.sh [SECONDS] [TARGET...]: runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer,
# the nightly toolchain) until 10M executions or SECONDS (default 600) each, with RSS capped
# at 512 MB and a 10 s timeout per input, and prints a Markdown table (executions, execs/s,
# coverage, peak RSS) for benches/RESULTS.md. Installs cargo-fuzz when it is missing.
#
# The corpora (fuzz/corpus/TARGET, not committed) are seeded from ../shared/vectors, the
# decoder test fixtures, the example config and a few hand-made packets; a crash is saved in
# fuzz/artifacts/TARGET and belongs, once fixed, in fuzz/regressions/TARGET, which the test
# command replays (tests/it/fuzz_regressions.rs). Fuzzing itself stays out of the test command.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
shift || true
runs=10000000
# meterflow forbids unsafe code, so the sanitizer would watch only dependencies; without it
# libFuzzer runs 2 to 5 times faster. FUZZ_SANITIZER=address brings it back.
sanitizer=${FUZZ_SANITIZER:-none}

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (crates.io)" >&2
  cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
fi

vectors=../shared/vectors
fixtures=decoders/tests/fixtures
seed() { # seed TARGET FILE...
  local dir=fuzz/corpus/$1
  shift
  mkdir -p "$dir"
  for f in "$@"; do
    [ -f "$f" ] && cp "$f" "$dir/seed-$(basename "$f")"
  done
  return 0
}
shopt -s nullglob globstar
seed decode_json fuzz/seeds/decode_json/*
seed decode_cbor fuzz/seeds/decode_cbor/*
seed decode_pb fuzz/seeds/decode_pb/*
seed decode_senml_json $vectors/senml/**/*.json $fixtures/senml/**/*.json
seed decode_senml_cbor $vectors/senml/**/*.cbor $fixtures/senml/**/*.cbor
seed decode_dsmr $vectors/dsmr/**/*.txt $vectors/dlms/**/*.txt $fixtures/dsmr/**/*
seed decode_lwm2m $vectors/lwm2m/**/*.json $fixtures/lwm2m/**/*
# DLMS pushes are kept as hex text: their bytes are the seeds.
seed_hex() { # seed_hex TARGET FILE...
  local dir=fuzz/corpus/$1
  shift
  mkdir -p "$dir"
  for f in "$@"; do
    python3 - "$f" "$dir/seed-$(basename "$f").bin" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
digits = "".join(re.sub(r"(#|//).*", "", line) for line in text.splitlines())
digits = re.sub(r"[^0-9A-Fa-f]", "", digits)
open(sys.argv[2], "wb").write(bytes.fromhex(digits[: len(digits) // 2 * 2]))
PY
  done
}
for t in decode_dlms dlms_ciphered dlms_frame; do
  seed_hex $t $fixtures/dlms/**/*.hex $fixtures/dlms/athombv_node_dsmr_parser/**/*.txt
done
seed_hex dlms_axdr $fixtures/dlms/u9n_dlms_cosem/kamstrup_han_body.hex
seed config_toml deploy/meterflow.example.toml
seed coap_datagram fuzz/seeds/coap_datagram/*
seed mqtt_connection fuzz/seeds/mqtt_connection/*
seed wal_segment fuzz/seeds/wal_segment/*
for t in "${targets[@]}"; do
  [ -d "fuzz/regressions/$t" ] && seed "$t" fuzz/regressions/"$t"/*
done

(cd fuzz && cargo +nightly fuzz build -O -s "$sanitizer")

echo "| target | executions | execs/s | coverage (edges) | features | peak RSS MB | seconds | result |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
for t in "${targets[@]}"; do
  log=$(mktemp)
  started=$(date +%s)
  result=ok
  (cd fuzz && cargo +nightly fuzz run -O -s "$sanitizer" "$t" "corpus/$t" -- \
      -runs=$runs -max_total_time="$seconds" -rss_limit_mb=512 -timeout=10 \
      -print_final_stats=1) >"$log" 2>&1 || result="FAILED (see fuzz/artifacts/$t)"
  took=$(( $(date +%s) - started ))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rss=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
  echo "| $t | ${execs:-?} | ${rate:-?} | ${cov:-?} | ${ft:-?} | ${rss:-?} | $took | $result |"
  if [ "$result" != ok ]; then
    tail -40 "$log" >&2
  fi
  rm -f "$log"
done
