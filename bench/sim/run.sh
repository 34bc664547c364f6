#!/bin/sh
# make sim: runs bench/sim/scale_sim at N = 100, 1000, 5000 (CPU only, simulated clock),
# writes bench/sim/results.tsv (one row per N) and bench/sim/scale.png (per-node figures
# against N). bench/RESULTS.md's "Scale" section quotes a run of this.
# Also bench/sim/full_round.tsv: the CPU of one full announce round at each N for a node
# holding 500, 2000 and 10000 blobs (full_round, beside scale_sim).
#   bench/sim/run.sh SCALE_SIM_BINARY FULL_ROUND_BINARY [N ...]
# The simulated nodes run as the daemon does: bytes from a peer wait for a home's digest
# (--confirm-wait, source_verify.c) and chunks landed on a claim are announced at once
# (--early-announce). SIM_FLAGS replaces that set, e.g. SIM_FLAGS= for the bare model.
set -eu
SIM=${1:?usage: bench/sim/run.sh SCALE_SIM_BINARY FULL_ROUND_BINARY [N ...]}
ROUND=${2:?usage: bench/sim/run.sh SCALE_SIM_BINARY FULL_ROUND_BINARY [N ...]}
shift 2
cd "$(dirname "$0")"
NS=${*:-100 1000 5000}
SIM_FLAGS=${SIM_FLAGS---confirm-wait --early-announce}
out=results.tsv
tmp=$(mktemp)
first=1
for n in $NS; do
	echo "  SIM     n=$n" >&2
	# shellcheck disable=SC2086 # SIM_FLAGS is a list of flags
	"$SIM" --n "$n" $SIM_FLAGS --tsv > "$tmp.row"
	if [ $first -eq 1 ]; then head -n 1 "$tmp.row" > "$tmp"; first=0; fi
	tail -n 1 "$tmp.row" >> "$tmp"
done
rm -f "$tmp.row"
mv "$tmp" "$out"
column -t "$out" >&2
printf 'n\tblobs\tfull_round_ms\n' > full_round.tsv
for n in $NS; do
	for b in 500 2000 10000; do
		"$ROUND" "$n" "$b" | awk '{print $2 "\t" $4 "\t" $6}' >> full_round.tsv
	done
done
column -t full_round.tsv >&2
gnuplot <<GP
set terminal pngcairo size 1200,900 font "DejaVu Sans,11"
set output 'scale.png'
set datafile separator "\t"
set logscale x
set xtics (100, 1000, 5000)
set grid
set key top left
set multiplot layout 2,2 title "p2pblobs scale simulation (bench/sim): per-node cost against cluster size N"
set title "control messages per node per second (mean over nodes)"
set xlabel "N"
set logscale y
plot '$out' using 1:2 skip 1 with linespoints lw 2 title "announce (sent+received)", \
     '' using 1:7 skip 1 with linespoints lw 2 title "locate (sent+received)", \
     '' using 1:12 skip 1 with linespoints lw 2 title "membership (DNS + probes)"
set title "control bytes per node per second (mean over nodes)"
plot '$out' using 1:4 skip 1 with linespoints lw 2 title "announce", \
     '' using 1:9 skip 1 with linespoints lw 2 title "locate", \
     '' using 1:13 skip 1 with linespoints lw 2 title "membership"
set title "the busiest node: messages received per second"
plot '$out' using 1:6 skip 1 with linespoints lw 2 title "announces (busiest home)", \
     '' using 1:11 skip 1 with linespoints lw 2 title "locates (busiest home)"
unset logscale y
set title "origin chunk fetches per distinct chunk read (1 = ideal)"
set yrange [0:*]
plot '$out' using 1:23 skip 1 with linespoints lw 2 title "mean over blobs", \
     '' using 1:(\$18*1) skip 1 with linespoints lw 2 title "locate answers per chunk miss"
unset multiplot
GP
echo "wrote bench/sim/$out and bench/sim/scale.png" >&2
