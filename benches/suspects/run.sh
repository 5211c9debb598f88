#!/usr/bin/env bash
# The revenue-protection evaluation of issue 24: a generated fleet (meterflow_simulate::theft:
# 500 customers on 10 feeders with head meters, 90 days of 15-minute reads, 5 % thieves by the
# six attack shapes, honest holidays, new tenants and inspections) imported into a Parquet
# tree, its registry and events kept, then `meterflow query suspects` over the last 30 days
# against the 60 before and `query balance --level feeder` over the same days. Prints the
# ranking's AUC and precision at 10/20/50 (against the truth the generator wrote), how many
# thieves of each attack are in the first 50, and each feeder's loss against the energy
# stolen on it. Results: benches/RESULTS.md, "Revenue protection".
#
#   benches/suspects/run.sh            (seeds 1, 2 and 3)
#   SEEDS=4,5 benches/suspects/run.sh
#
# It is tests/it/suspects.rs's `evaluation_at_full_size` (ignored in the test suite, which
# runs the same at hourly reads), built in release; each seed's goals (AUC >= 0.85,
# precision@20 >= 0.8, each feeder's loss between what was stolen on it and that plus 8 % of
# its head) are asserted.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export METERFLOW_EVAL_SEEDS=${SEEDS:-1,2,3}
cargo build --release --offline --test it >/dev/null
/usr/bin/time -f 'wall %e s, user %U s, sys %S s, peak RSS %M KB (the test process)' \
  cargo test --release --offline --test it suspects::evaluation_at_full_size -- \
  --ignored --nocapture --test-threads 1
