#!/usr/bin/env bash
# Backup/restore benchmark: nuwax-cli against `tar czf`, `tar -I pigz` and `tar xzf`, and a
# rollback over a live tree against `rm -rf && tar xzf`.
#
#   bench/run.sh [SIZE_MB]          # default 1000 (the 1 GB corpus)
#   bench/run.sh many               # many small files: --size-mb 300 --tiny-files 500000
#
# Builds the release binary once, generates (or reuses) a corpus with
# $SHARED_DIR/bench/make_corpus.py, then, with a warm page cache, times the three backups and
# the three restores of the same tree in rounds (each tool once per round, the order rotating).
# Prints a markdown table: medians, ratios, archive sizes, and nuwax-cli's peak RSS.
#
# Environment:
#   SHARED_DIR   dir holding bench/make_corpus.py (default: ../shared from the repo root)
#   ROUNDS       rounds per tool (default 3)
#   LEVEL        pass --compression-level LEVEL to our backup (default: the config default)
#   BENCH_CACHE  where corpora are cached, one per size (default ${TMPDIR:-/tmp}/nuwax-bench)
#   ONLY_OURS=1  skip tar and pigz (quick runs, e.g. a compression-level sweep)
#   TINY_FILES   pass --tiny-files N to make_corpus.py (files in app/node_modules; `many` sets
#                500000).
# Every tool's peak RSS is measured (/usr/bin/time -v), and our `verify` is timed too.
#   SECOND=0     skip the second-backup section (issue 16; on by default)
#   ONLY_SECOND=1  run only the second-backup section
#   BENCH_FS=xfs the second-backup section runs on an XFS filesystem (reflink=1) made in a
#                sparse loop file in the scratch dir and mounted there (needs root and
#                xfsprogs, installed with apt when missing; unmounted at exit): the members
#                of unchanged files are then copied as block clones, not as bytes. Default:
#                the scratch dir's own filesystem.
#   ENCRYPTED=0  skip the encrypted-restore section (issue 13; on by default)
#   ONLY_ENCRYPTED=1  run only the encrypted-restore section
#
# Encrypted restore (issue 13): an age key from `age-keygen`, a backup with
# `[encryption] scope = "all"` (a *.tar.gz.age archive), then, in rounds, our rollback
# --rollback-data --identity into an empty compose dir against `age -d -i KEY | tar xzf -`
# and against our plain restore of the same tree. Prints its own table.
#
# Second backup (issue 16): on a copy of the corpus, a first backup, then a deterministic
# change of about 5 % of the bytes (bench/change_corpus.py: database files rewritten and
# appended to, new uploads, 300 small files touched), then the second backup; each of
# `nuwax-cli auto-backup run`, `tar czf` and `restic backup` (Debian's package; its
# repository unencrypted-in-spirit: a fixed password) times both runs, once. The bench
# project has one real container (busybox-static imported as an image, `sleep`, restart
# policy unless-stopped, SIGKILL as its stop signal), which `auto-backup run` stops and starts
# again: its downtime is read from the engine (`State.FinishedAt` to `State.StartedAt`).
# Then, the container stopped, `nuwax-cli backup` (whose whole command is the downtime) takes
# the second backup again from the same first one, and `backup --full` reads the changed tree
# in full (what a first backup costs, and the archive size from scratch).
#
# Every timed command starts after `sync` (no dirty pages from the previous one). Nothing is
# deleted until the end: old archives and restored trees are moved aside, and the restore
# rounds start with an untimed warm-up extraction. (On ext4 without a journal, as on the
# machine this was written on, creating files right after deleting tens of thousands is
# several times slower, for minutes: the inode allocator skips recently deleted inodes, and
# whoever extracts first pays, up to 5x; the warm-up absorbs deletions of earlier runs.)
# Our backup includes its fsyncs and catalog writes; our restore includes the SHA-256 check
# of the archive, staged extraction with per-file verification, syncfs and the swap. tar and
# pigz neither fsync nor verify anything. Disk: about (3 x ROUNDS + 4) x the corpus.
set -euo pipefail

SIZE_MB="${1:-1000}"
MODE="$SIZE_MB"
TINY_FILES="${TINY_FILES:-}"
if [[ "$SIZE_MB" == many ]]; then SIZE_MB=300; TINY_FILES="${TINY_FILES:-500000}"; fi
ROUNDS="${ROUNDS:-3}"
LEVEL="${LEVEL:-}"
ONLY_OURS="${ONLY_OURS:-0}"
SECOND="${SECOND:-1}"
ONLY_SECOND="${ONLY_SECOND:-0}"
BENCH_FS="${BENCH_FS:-}"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED_DIR="${SHARED_DIR:-$REPO/../shared}"
SHARED_DIR="$(cd "$SHARED_DIR" && pwd)"
MAKE_CORPUS="$SHARED_DIR/bench/make_corpus.py"
CACHE="${BENCH_CACHE:-${TMPDIR:-/tmp}/nuwax-bench}"

die() { echo "bench: $*" >&2; exit 1; }
say() { echo "bench: $*" >&2; }

[[ "$SIZE_MB" =~ ^[0-9]+$ && "$SIZE_MB" -gt 0 ]] || die "size must be a positive number of MB, not '$SIZE_MB'"
[[ "$ROUNDS" =~ ^[0-9]+$ && "$ROUNDS" -gt 0 ]] || die "ROUNDS must be a positive integer"
[[ -f "$MAKE_CORPUS" ]] || die "$MAKE_CORPUS not found (set SHARED_DIR)"
[[ -z "$BENCH_FS" || "$BENCH_FS" == xfs ]] || die "BENCH_FS must be xfs or unset, not '$BENCH_FS'"

# --- tools -------------------------------------------------------------------------------
apt_install() {
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    say "installing $* with apt"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
command -v pigz >/dev/null || apt_install pigz
[[ -x /usr/bin/time ]] || apt_install time
[[ "$SECOND" != 1 ]] || command -v restic >/dev/null || apt_install restic
ENCRYPTED="${ENCRYPTED:-1}"
ONLY_ENCRYPTED="${ONLY_ENCRYPTED:-0}"
[[ "$ENCRYPTED" != 1 ]] || command -v age-keygen >/dev/null || apt_install age
for t in tar gzip python3 cargo; do command -v "$t" >/dev/null || die "$t is required"; done

# --- build once --------------------------------------------------------------------------
say "building the release binary"
(cd "$REPO" && cargo build --release --bin nuwax-cli --quiet)
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$REPO/$TARGET_DIR"
BIN="$TARGET_DIR/release/nuwax-cli"
[[ -x "$BIN" ]] || die "$BIN was not built"

# --- corpus (cached per size) ------------------------------------------------------------
CORPUS_ROOT="$CACHE/corpus-${SIZE_MB}MB${TINY_FILES:+-${TINY_FILES}files}"
TINY_ARGS=()
[[ -n "$TINY_FILES" ]] && TINY_ARGS=(--tiny-files "$TINY_FILES")
CORPUS="$CORPUS_ROOT/docker"
if [[ ! -f "$CORPUS_ROOT/.complete" ]]; then
    say "generating a ${SIZE_MB} MB corpus in $CORPUS (cached for later runs)"
    rm -rf "$CORPUS_ROOT"
    mkdir -p "$CORPUS_ROOT"
    python3 "$MAKE_CORPUS" "$CORPUS" --size-mb "$SIZE_MB" "${TINY_ARGS[@]}" --quiet >"$CORPUS_ROOT/summary.json"
    touch "$CORPUS_ROOT/.complete"
else
    say "reusing the corpus in $CORPUS"
fi
CORPUS_BYTES=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes"])' "$CORPUS_ROOT/summary.json")
CORPUS_FILES=$(find "$CORPUS" -type f | wc -l)

SCRATCH="$(mktemp -d "$CACHE/run.XXXXXX")"
XFS_MNT=""
BENCH_CONTAINER_MADE=0
cleanup() {
    if [[ "$BENCH_CONTAINER_MADE" == 1 ]]; then docker rm -f "$BENCH_CONTAINER" >/dev/null 2>&1 || true; fi
    if [[ -n "$XFS_MNT" ]]; then umount "$XFS_MNT" || umount -l "$XFS_MNT"; fi
    rm -rf "$SCRATCH"
}
trap cleanup EXIT
TRASH="$SCRATCH/trash"
mkdir -p "$TRASH"

# Three restored trees per round, the warm-up tree, and the archives; the encrypted section
# two more per round and its own warm-up.
need=$((SIZE_MB * 1000000 / 100 * (500 * ROUNDS + 600)))
avail=$(df -B1 --output=avail "$SCRATCH" | tail -1)
[[ "$avail" -gt "$need" ]] || die "needs about $((need / 1000000000)) GB free in $CACHE, has $((avail / 1000000000)) GB"

# --- helpers -----------------------------------------------------------------------------
now() { date +%s.%N; }
# timed NAME CMD...: runs CMD after a sync, appends the wall time to $SCRATCH/t.NAME.
timed() {
    local name="$1"; shift
    sync
    local t0 t1
    t0=$(now)
    "$@"
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b - a}' >>"$SCRATCH/t.$name"
}
# timed_rss NAME CMD...: like timed, and appends the peak RSS (KiB) to $SCRATCH/rss.NAME.
timed_rss() {
    local name="$1"; shift
    timed "$name" /usr/bin/time -v -o "$SCRATCH/time.out" "$@"
    awk -F': ' '/Maximum resident set size/ {print $2}' "$SCRATCH/time.out" >>"$SCRATCH/rss.$name"
}
median() { sort -g "$SCRATCH/t.$1" | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
maxrss() { sort -g "$SCRATCH/rss.$1" | tail -1; }
fsize() { stat -c %s "$1"; }
# Moves PATH aside (deleted at the end), leaving nothing or, with a second argument, an empty
# dir.
n_trash=0
discard() {
    if [[ -e "$1" ]]; then n_trash=$((n_trash + 1)); mv "$1" "$TRASH/$n_trash"; fi
    if [[ $# -gt 1 ]]; then mkdir -p "$1"; fi
}
# Really reads the corpus (GNU tar skips reading when it writes to /dev/null).
warm() { tar cf - -C "$CORPUS" . | cat >/dev/null; }

# Our work dir: config.toml, catalog and archives under $SCRATCH; the compose dir is the
# cached corpus itself (read only by a backup).
write_config() { # DIR COMPOSE_FILE
    cat >"$1/config.toml" <<EOF
[docker]
compose_file = "$2"
project = "nuwax-bench"

[backup]
storage_dir = "backups"
exclude = []
EOF
}
LEVEL_ARGS=()
[[ -n "$LEVEL" ]] && LEVEL_ARGS=(--compression-level "$LEVEL")


# --- a container for the bench project (the downtime of auto-backup run) ------------------
BENCH_CONTAINER=nuwax-bench-app
bench_container() {
    [[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1 || apt_install busybox-static
    local rootfs="$SCRATCH/rootfs"
    mkdir -p "$rootfs/bin"
    cp /bin/busybox "$rootfs/bin/busybox"
    ln -sf busybox "$rootfs/bin/sleep"
    tar -C "$rootfs" -c . | docker import - nuwax-bench-busybox:latest >/dev/null
    docker rm -f "$BENCH_CONTAINER" >/dev/null 2>&1 || true
    docker run -d --name "$BENCH_CONTAINER" --network none --restart unless-stopped \
        --stop-signal SIGKILL \
        --label com.docker.compose.project=nuwax-bench \
        --label com.docker.compose.service=app \
        --label com.docker.compose.oneoff=False \
        nuwax-bench-busybox:latest sleep 1000000 >/dev/null
    BENCH_CONTAINER_MADE=1
}
# Seconds the bench container was down in the last stop/start: FinishedAt to StartedAt.
downtime() {
    python3 - "$(docker inspect -f '{{.State.FinishedAt}} {{.State.StartedAt}}' "$BENCH_CONTAINER")" <<'PY'
import sys, datetime
def t(s):
    day, frac = s.rstrip("Z").split(".")
    return datetime.datetime.fromisoformat(day).timestamp() + float("0." + frac)
stopped, started = sys.argv[1].split()
print(f"{t(started) - t(stopped):.3f}")
PY
}

# --- second backup (issue 16) ---------------------------------------------------------------
# Runs on a copy of the corpus (the cached one stays as generated). Prints its own table.
second_backup() {
    local IC="$SCRATCH/second" st fs_note="the scratch dir's filesystem ($(stat -f -c %T "$SCRATCH"))"
    mkdir -p "$IC"
    if [[ "$BENCH_FS" == xfs ]]; then
        command -v mkfs.xfs >/dev/null || apt_install xfsprogs
        # Room for the corpus copy, three archives, restic's repository, tar's two archives
        # and one extraction; sparse, so it costs what is written.
        truncate -s "$((SIZE_MB * 10))M" "$SCRATCH/xfs.img"
        mkfs.xfs -q -m reflink=1 "$SCRATCH/xfs.img"
        mount -o loop "$SCRATCH/xfs.img" "$IC"
        XFS_MNT="$IC"
        fs_note="XFS (reflink=1) in a loop file"
    fi
    mkdir -p "$IC/work"
    say "second backup: copying the corpus"
    cp -a "$CORPUS" "$IC/work/docker"
    write_config "$IC/work" "docker/docker-compose.yml"
    export RESTIC_PASSWORD=bench RESTIC_REPOSITORY="$IC/restic"
    restic init -q >/dev/null
    # Files changed less than 2 s before a backup are read again by the next one (their
    # ctime could share a clock tick with that backup's read): age the fresh copy.
    sleep 3
    warm
    bench_container
    say "second backup: first runs"
    timed_rss s1_ours "$BIN" -C "$IC/work" -q auto-backup run
    downtime >"$SCRATCH/t.d1"
    timed s1_tar tar czf "$IC/t1.tar.gz" -C "$IC/work/docker" .
    timed s1_restic restic backup -q "$IC/work/docker"
    say "second backup: changing about 5 % of the bytes"
    python3 "$REPO/bench/change_corpus.py" "$IC/work/docker" >"$IC/change.json"
    warm
    say "second backup: second runs"
    local avail0 avail1
    avail0=$(df -B1 --output=avail "$IC" | tail -1)
    timed_rss s2_ours "$BIN" -C "$IC/work" -q auto-backup run
    downtime >"$SCRATCH/t.d2"
    avail1=$(df -B1 --output=avail "$IC" | tail -1)
    timed s2_tar tar czf "$IC/t2.tar.gz" -C "$IC/work/docker" .
    timed s2_restic restic backup -q "$IC/work/docker"
    # The same tree from scratch, for the size (and the same content: compared below).
    docker stop "$BENCH_CONTAINER" >/dev/null
    local second full second_size
    second=$(ls -t "$IC"/work/backups/*auto*.tar.gz | head -1)
    second_size=$(fsize "$second")
    mkdir -p "$IC/x"
    tar xzf "$second" -C "$IC/x"
    rm -rf "$IC/x/.nuwax-backup"
    if ! (cd "$IC/work/docker" && tar cf - . | tar df - -C "$IC/x" >/dev/null); then
        die "tar -xzf of the second backup differs from the changed tree"
    fi
    # `backup`, the services stopped by the operator: its whole command is the downtime.
    # The second from the same first backup (the auto-backup's second one deleted), then a
    # full read of the same tree: what a first backup reads and writes, and the size from
    # scratch.
    local newest
    newest=$("$BIN" -C "$IC/work" list-backups --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["backups"][0]["id"])')
    "$BIN" -C "$IC/work" -q delete-backup "$newest" --force
    timed b2_ours "$BIN" -C "$IC/work" -q backup
    timed b1_ours "$BIN" -C "$IC/work" -q backup --full
    full=$(ls -t "$IC"/work/backups/*manual*.tar.gz | head -1)
    local S1 S2 T1 T2 R1 R2 D1 D2 B1 B2
    S1=$(median s1_ours); S2=$(median s2_ours)
    D1=$(median d1); D2=$(median d2)
    T1=$(median s1_tar); T2=$(median s2_tar)
    R1=$(median s1_restic); R2=$(median s2_restic)
    B1=$(median b1_ours); B2=$(median b2_ours)
    echo
    echo "Second backup, one run each, on $fs_note, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end; change: $(cat "$IC/change.json")"
    echo
    echo "| | first (s) | second (s) | second: nuwax-cli faster by |"
    echo "|---|---:|---:|---:|"
    echo "| **nuwax-cli auto-backup run: downtime** (container stopped to started, from the engine) | **$(fmt "$D1")** | **$(fmt "$D2")** | $(fmt "$(ratio "$T2" "$D2")")x \`tar czf\`, $(fmt "$(ratio "$R2" "$D2")")x restic |"
    echo "| nuwax-cli auto-backup run: whole command (the copies and the archive's sync after the start) | $(fmt "$S1") | $(fmt "$S2") | $(fmt "$(ratio "$T2" "$S2")")x \`tar czf\`, $(fmt "$(ratio "$R2" "$S2")")x restic |"
    echo "| **nuwax-cli backup** (services stopped by the operator; first: \`backup --full\` of the changed tree) | **$(fmt "$B1")** | **$(fmt "$B2")** | $(fmt "$(ratio "$T2" "$B2")")x \`tar czf\`, $(fmt "$(ratio "$R2" "$B2")")x restic |"
    echo "| \`tar czf\` | $(fmt "$T1") | $(fmt "$T2") | |"
    echo "| \`restic backup\` | $(fmt "$R1") | $(fmt "$R2") | |"
    echo
    echo "nuwax-cli second / first backup: downtime $(fmt "$(ratio "$D1" "$D2")")x shorter, second downtime / our first whole backup $(fmt "$(ratio "$S1" "$D2")")x, whole command $(fmt "$(ratio "$S1" "$S2")")x faster; \`backup\` second / first $(fmt "$(ratio "$B1" "$B2")")x faster; archive $second_size bytes, from scratch $(fsize "$full") ($(pct "$second_size" "$(fsize "$full")")); peak RSS first $(( $(maxrss s1_ours) / 1024 )) MiB, second $(( $(maxrss s2_ours) / 1024 )) MiB; the second backup took $(( (avail0 - avail1) / 1000000 )) MB of new disk space (df)."
}
fmt() { printf '%.2f' "$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.4f", a / b}'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%+.2f %%", (a / b - 1) * 100}'; }
# --- encrypted restore (issue 13) ----------------------------------------------------------
# A work dir of its own whose config encrypts local archives (scope "all"); the restores go
# into an empty compose dir, as the plain restore rounds do. Prints its own table.
encrypted_restore() {
    local EW="$SCRATCH/enc" pub id arch
    mkdir -p "$EW/work"
    age-keygen -o "$EW/key.txt" 2>/dev/null
    pub=$(age-keygen -y "$EW/key.txt")
    write_config "$EW/work" "$CORPUS/docker-compose.yml"
    printf '\n[encryption]\nrecipients = ["%s"]\nscope = "all"\n' "$pub" >>"$EW/work/config.toml"
    warm
    say "encrypted restore: backup"
    timed_rss enc_backup "$BIN" -C "$EW/work" -q backup --skip-docker-check "${LEVEL_ARGS[@]}"
    arch=$(ls "$EW"/work/backups/*.tar.gz.age)
    id=$("$BIN" -C "$EW/work" list-backups --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["backups"][0]["id"])')
    # Restores go into the work dir's own (empty) compose dir.
    write_config "$EW/work" "docker/docker-compose.yml"
    printf '\n[encryption]\nrecipients = ["%s"]\nscope = "all"\n' "$pub" >>"$EW/work/config.toml"
    enc_ours() {
        discard "$EW/work/docker" new
        timed_rss enc_ours "$BIN" -C "$EW/work" -q rollback "$id" --force --no-start --rollback-data --identity "$EW/key.txt"
    }
    enc_age() {
        discard "$EW/x_age" new
        timed_rss enc_age bash -c 'age -d -i "$1" "$2" | tar xzf - -C "$3"' _ "$EW/key.txt" "$arch" "$EW/x_age"
    }
    say "encrypted restore: warm-up (untimed)"
    mkdir -p "$TRASH/enc-warmup"
    age -d -i "$EW/key.txt" "$arch" | tar xzf - -C "$TRASH/enc-warmup"
    for r in $(seq 1 "$ROUNDS"); do
        say "encrypted restore round $r/$ROUNDS"
        for t in $(rotated "$r" enc_ours enc_age); do "$t"; done
    done
    if ! (cd "$CORPUS" && tar cf - . | tar df - -C "$EW/work/docker" >/dev/null); then
        die "the tree restored from the encrypted backup differs from the corpus"
    fi
    local EO EA EB
    EO=$(median enc_ours); EA=$(median enc_age); EB=$(median enc_backup)
    echo
    echo "Encrypted (age, scope \"all\"), median of $ROUNDS rounds; archive $(fsize "$arch") bytes; load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
    echo
    echo "| encrypted | time (s) | age + tar / ours (speed-up) | peak RSS |"
    echo "|---|---:|---:|---:|"
    echo "| nuwax-cli backup (encrypting) | $(fmt "$EB") | | $(( $(maxrss enc_backup) / 1024 )) MiB |"
    echo "| \`age -d -i KEY FILE\` piped to \`tar xzf -\` | $(fmt "$EA") | | $(( $(maxrss enc_age) / 1024 )) MiB |"
    echo "| **nuwax-cli rollback --rollback-data --identity** (into an empty dir) | **$(fmt "$EO")** | $(fmt "$(ratio "$EA" "$EO")")x | $(( $(maxrss enc_ours) / 1024 )) MiB |"
}
# rotated ROUND TOOL...: the tools in the order for ROUND (1-based).
rotated() {
    local r="$1"; shift
    local tools=("$@") n=$#
    for ((k = 0; k < n; k++)); do echo "${tools[(r - 1 + k) % n]}"; done
}
if [[ "$ONLY_SECOND" == 1 ]]; then
    second_backup
    exit 0
fi
if [[ "$ONLY_ENCRYPTED" == 1 ]]; then
    encrypted_restore
    exit 0
fi

# --- backup rounds -----------------------------------------------------------------------
# Each round runs every tool once; the order rotates from round to round, so that no tool is
# always first (or always right after another).
TGZ="$SCRATCH/tar.tar.gz"
PGZ="$SCRATCH/pigz.tar.gz"
OURS=""
backup_tar() {
    discard "$TGZ"
    timed_rss tar_czf tar czf "$TGZ" -C "$CORPUS" .
}
backup_pigz() {
    discard "$PGZ"
    timed_rss pigz_c tar -I pigz -cf "$PGZ" -C "$CORPUS" .
}
backup_ours() {
    # A fresh work dir each time: no archive or catalog row from the previous one.
    discard "$SCRATCH/work" new
    write_config "$SCRATCH/work" "$CORPUS/docker-compose.yml"
    timed_rss ours_backup "$BIN" -C "$SCRATCH/work" -q backup --skip-docker-check "${LEVEL_ARGS[@]}"
    OURS=$(ls "$SCRATCH"/work/backups/*.tar.gz)
    timed_rss ours_verify "$BIN" -C "$SCRATCH/work" -q verify --all
}
restore_tar() {
    discard "$SCRATCH/x_tar" new
    timed_rss tar_xzf tar xzf "$TGZ" -C "$SCRATCH/x_tar"
}
restore_pigz() {
    discard "$SCRATCH/x_pigz" new
    timed_rss pigz_x bash -c 'pigz -dc "$1" | tar xf - -C "$2"' _ "$TGZ" "$SCRATCH/x_pigz"
}
restore_ours() {
    discard "$SCRATCH/work/docker" new
    timed_rss ours_restore "$BIN" -C "$SCRATCH/work" -q rollback "$OURS_ID" --force --no-start --rollback-data
}
if [[ "$ONLY_OURS" == 1 ]]; then
    BACKUPS=(backup_ours); RESTORES=(restore_ours)
else
    BACKUPS=(backup_tar backup_pigz backup_ours); RESTORES=(restore_tar restore_pigz restore_ours)
fi

for r in $(seq 1 "$ROUNDS"); do
    say "backup round $r/$ROUNDS"
    warm
    for t in $(rotated "$r" "${BACKUPS[@]}"); do "$t"; done
done
OURS_ID=$("$BIN" -C "$SCRATCH/work" list-backups --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["backups"][0]["id"])')

# --- restore rounds ----------------------------------------------------------------------
# Our restore goes into the work dir of our last backup, now with an empty compose dir of its
# own: the rollback restores everything (--rollback-data) and replaces nothing.
write_config "$SCRATCH/work" "docker/docker-compose.yml"
say "restore warm-up (untimed)"
mkdir -p "$TRASH/warmup"
tar xzf "$OURS" -C "$TRASH/warmup"
for r in $(seq 1 "$ROUNDS"); do
    say "restore round $r/$ROUNDS"
    for t in $(rotated "$r" "${RESTORES[@]}"); do "$t"; done
done
# Sanity: the restored tree is the corpus (content, modes, links; as tar -d sees it).
if ! (cd "$CORPUS" && tar cf - . | tar df - -C "$SCRATCH/work/docker" >/dev/null); then
    die "restored tree differs from the corpus"
fi

# --- rollback over a live tree (issue 16, item 7) ----------------------------------------
# What an operator does: replace a live tree. Ours: `rollback --rollback-data` over the tree
# the restore rounds left in the work dir (staged extraction, swap, then, once the swap is
# committed and the services would start, removal of the replaced tree); theirs: `rm -rf` the
# live tree, then `tar xzf` of the same archive. Both delete and create a whole corpus.
LIVE_TAR="$SCRATCH/live_tar"
mkdir -p "$LIVE_TAR"
tar xzf "$OURS" -C "$LIVE_TAR"
live_rm_tar() {
    timed rm_tar bash -c 'rm -rf "$1" && mkdir "$1" && tar xzf "$2" -C "$1"' _ "$LIVE_TAR" "$OURS"
}
live_ours() {
    timed ours_live "$BIN" -C "$SCRATCH/work" -q rollback "$OURS_ID" --force --no-start --rollback-data --json >"$SCRATCH/live.json"
    python3 -c 'import json,sys; print("%.3f" % (json.load(open(sys.argv[1]))["committed_after_ms"] / 1000))' \
        "$SCRATCH/live.json" >>"$SCRATCH/t.ours_live_commit"
}
for r in $(seq 1 "$ROUNDS"); do
    say "rollback over a live tree, round $r/$ROUNDS"
    for t in $(rotated "$r" live_rm_tar live_ours); do "$t"; done
done
if ! (cd "$CORPUS" && tar cf - . | tar df - -C "$SCRATCH/work/docker" >/dev/null); then
    die "the tree rolled back over a live tree differs from the corpus"
fi

# --- report ------------------------------------------------------------------------------
OB=$(median ours_backup)
OR=$(median ours_restore)
OURS_SIZE=$(fsize "$OURS")
CPU=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
MEM=$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)
RSS_B=$(maxrss ours_backup)
RSS_R=$(maxrss ours_restore)

echo
echo "Benchmark $(date -u +%Y-%m-%d), $(nproc) cores ($CPU), $MEM RAM, $(uname -sr);"
echo "corpus: make_corpus.py --size-mb $SIZE_MB ${TINY_ARGS[*]} ($CORPUS_BYTES bytes of file content, $CORPUS_FILES files); warm cache; median of $ROUNDS rounds, tool order rotating;"
echo "nuwax-cli compression level: ${LEVEL:-default (config)}; \`bench/run.sh $MODE\`."
echo
RT=$(median rm_tar); OL=$(median ours_live); OLC=$(median ours_live_commit)
live_table() {
    echo "| rollback over a live tree | time (s) | \`rm -rf\` + \`tar xzf\` / ours (speed-up) |"
    echo "|---|---:|---:|"
    echo "| \`rm -rf\` + \`tar xzf\` | $(fmt "$RT") | |"
    echo "| **nuwax-cli rollback --rollback-data**, until the swap is committed (the services start here) | **$(fmt "$OLC")** | $(fmt "$(ratio "$RT" "$OLC")")x |"
    echo "| nuwax-cli rollback --rollback-data, whole command (the replaced tree removed after the start) | $(fmt "$OL") | $(fmt "$(ratio "$RT" "$OL")")x |"
    echo
    echo "Per round (s): rm -rf + tar xzf $(raw rm_tar); ours until committed $(raw ours_live_commit); ours whole $(raw ours_live)."
}
raw() { tr '\n' ' ' <"$SCRATCH/t.$1" | sed 's/ $//'; }
if [[ "$ONLY_OURS" == 1 ]]; then
    live_table
    echo
    echo "| | time (s) | archive (bytes) | peak RSS |"
    echo "|---|---:|---:|---:|"
    echo "| nuwax-cli backup | $(fmt "$OB") | $OURS_SIZE | $((RSS_B / 1024)) MiB |"
    echo "| nuwax-cli restore | $(fmt "$OR") | | $((RSS_R / 1024)) MiB |"
    [[ "$SECOND" != 1 ]] || second_backup
    [[ "$ENCRYPTED" != 1 ]] || encrypted_restore
    exit 0
fi
TC=$(median tar_czf); PC=$(median pigz_c)
TX=$(median tar_xzf); PX=$(median pigz_x)
TGZ_SIZE=$(fsize "$TGZ"); PGZ_SIZE=$(fsize "$PGZ")

echo "| backup | time (s) | ours / theirs | theirs / ours (speed-up) | archive (bytes) | size vs tar czf |"
echo "|---|---:|---:|---:|---:|---:|"
echo "| \`tar czf\` | $(fmt "$TC") | $(fmt "$(ratio "$OB" "$TC")") | $(fmt "$(ratio "$TC" "$OB")")x | $TGZ_SIZE | 0 % |"
echo "| \`tar -I pigz -cf\` | $(fmt "$PC") | $(fmt "$(ratio "$OB" "$PC")") | $(fmt "$(ratio "$PC" "$OB")")x | $PGZ_SIZE | $(pct "$PGZ_SIZE" "$TGZ_SIZE") |"
echo "| **nuwax-cli backup** | **$(fmt "$OB")** | | | $OURS_SIZE | $(pct "$OURS_SIZE" "$TGZ_SIZE") |"
echo
echo "| restore | time (s) | ours / theirs | theirs / ours (speed-up) |"
echo "|---|---:|---:|---:|"
echo "| \`tar xzf\` | $(fmt "$TX") | $(fmt "$(ratio "$OR" "$TX")") | $(fmt "$(ratio "$TX" "$OR")")x |"
echo "| \`pigz -dc \| tar x\` | $(fmt "$PX") | $(fmt "$(ratio "$OR" "$PX")") | $(fmt "$(ratio "$PX" "$OR")")x |"
echo "| **nuwax-cli rollback --rollback-data** | **$(fmt "$OR")** | | |"
echo
mib() { echo "$(($(maxrss "$1") / 1024)) MiB"; }
echo "Peak RSS (max over rounds): tar czf $(mib tar_czf), tar -I pigz $(mib pigz_c), nuwax-cli backup $(mib ours_backup);"
echo "tar xzf $(mib tar_xzf), pigz -dc | tar x $(mib pigz_x) (the largest process), nuwax-cli rollback $(mib ours_restore);"
echo "nuwax-cli verify (after each backup): $(fmt "$(median ours_verify)") s, $(mib ours_verify)."
echo
live_table
echo
echo "Per round (s), in round order (the tool order rotates): tar czf $(raw tar_czf); pigz $(raw pigz_c); ours $(raw ours_backup);"
echo "tar xzf $(raw tar_xzf); pigz -dc | tar x $(raw pigz_x); ours $(raw ours_restore)."
[[ "$SECOND" != 1 ]] || second_backup
[[ "$ENCRYPTED" != 1 ]] || encrypted_restore
