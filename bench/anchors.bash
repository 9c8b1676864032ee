# bench/anchors.bash: the anchors bench/run measures beside Tally, on the same machine in the
# same run: nginx answering `return 200`, Redis INCRBY without persistence and with
# `appendfsync always`, and pgbench running the per-request upsert against PostgreSQL.
# Sourced by bench/run, whose helpers (say, fail, record, run_measured) and settings (WORK,
# RESULTS, DURATION, DURATION_SECS, CONNECTIONS, KEYS) it uses; not a program of its own.
#
# Every anchor is a throwaway instance: its own configuration and data under $WORK, on a free
# loopback port, stopped by bench/run's clean-up. The system services Debian's packages set up
# are neither used nor touched.

NGINX_PID=
NGINX_PORT=
REDIS_PID=
REDIS_PORT=

# Installs from Debian, with apt-get, whichever of these programs is missing: wrk (the HTTP
# client), nginx, redis-server, redis-benchmark (package redis-tools) and pgbench (package
# postgresql-client). Idempotent: nothing is installed when all are there. Where the init
# system allows it, Debian's nginx and redis-server packages start their own system services
# on install (ports 80 and 6379); bench/run leaves them alone.
install_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v nginx >/dev/null || missing+=(nginx)
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v redis-benchmark >/dev/null || missing+=(redis-tools)
    command -v pgbench >/dev/null || missing+=(postgresql-client)
    ((${#missing[@]})) || return 0
    say "installing ${missing[*]} from the Debian packages (apt-get)"
    local sudo=()
    ((EUID == 0)) || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
        { "${sudo[@]}" apt-get update -q >/dev/null &&
            "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
}

# Prints a loopback TCP port no socket uses, below the kernel's range of ephemeral ports, so
# that no client connection of this run (wrk, tally load, the pools) can be holding it. Another
# program may still take it before it is used; the server started on it then fails to start,
# and the run says so (Redis, started many times a run, tries again on another port).
free_port() {
    local low=32768 port
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    ((low > 11000)) || low=32768
    while :; do
        port=$((10000 + RANDOM % (low - 10000)))
        if command -v ss >/dev/null; then
            [[ -z $(ss -Htan "( sport = :$port )" 2>/dev/null) ]] && break
        # Without ss: a connection refused means no listener.
        elif ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            break
        fi
    done
    printf '%s\n' "$port"
}

# Versions for the machine table.
anchor_versions() {
    printf '"nginx":%s,' "$(json_string "$(nginx -v 2>&1 | sed 's/^nginx version: //')")"
    printf '"redis":%s,' "$(json_string "$(redis-server --version | cut -d ' ' -f 1-3)")"
    printf '"pgbench":%s,' "$(json_string "$(pgbench --version)")"
}

# Starts nginx with a configuration of its own under $WORK/nginx: `return 200` for every
# request (the POST /increment that bench/post_increment.lua sends included; nginx discards its
# body), no access log, and `worker_processes auto`, one worker per core, as Tally's runtime
# has one worker thread per core. keepalive_requests is raised from its default of 1,000 so
# that, like Tally, nginx keeps a client's connection open however many requests it carries.
start_nginx() {
    local dir=$WORK/nginx
    mkdir -p "$dir"
    NGINX_PORT=$(free_port)
    cat >"$dir/nginx.conf" <<EOF
# Written by bench/run: a throwaway nginx, the anchor for an HTTP server doing no work.
daemon off;
master_process on;
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / { return 200; }
    }
}
EOF
    record nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
    printf '# %s\n' "nginx.conf: worker_processes auto; access_log off; keepalive_requests 1000000; location / { return 200; }" >>"$COMMANDS"
    setsid nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$WORK/logs/nginx.log" 2>&1 &
    NGINX_PID=$!
    local deadline=$((SECONDS + 10))
    until (exec 3<>"/dev/tcp/127.0.0.1/$NGINX_PORT") 2>/dev/null; do
        kill -0 "$NGINX_PID" 2>/dev/null ||
            fail "nginx exited during start-up: $(cat "$WORK/logs/nginx.log" "$dir/error.log" 2>/dev/null)"
        ((SECONDS < deadline)) || fail "nginx did not listen on port $NGINX_PORT within 10 s"
        sleep 0.1
    done
}

# SIGQUIT: nginx's graceful stop.
stop_nginx() {
    [[ -n $NGINX_PID ]] || return 0
    kill -QUIT "$NGINX_PID" 2>/dev/null || true
    wait_for_exit "$NGINX_PID" 10 || kill -KILL "$NGINX_PID" 2>/dev/null || true
    wait "$NGINX_PID" 2>/dev/null || true
    NGINX_PID=
}

# wrk as bench/run runs it against nginx and against Tally: $1 the URL, $2 the connections, $3
# the file for its output. The same script, bench/post_increment.lua, for both, so that the
# client does the same work per request whichever server answers.
wrk_post() {
    local cmd=(wrk -t2 "-c$2" "-d$DURATION" --latency -s bench/post_increment.lua "$1")
    record "${cmd[@]}"
    run_measured "${cmd[@]}" >"$3" || fail "${cmd[*]} failed"
}

# Measures nginx with wrk at $1 connections into $2.
measure_nginx() {
    wrk_post "http://127.0.0.1:$NGINX_PORT" "$1" "$2"
}

# Starts a throwaway redis-server named $1 ("none" or "always") on a fresh directory: no
# snapshots, and either no append-only file or one with `appendfsync always` (a write(2) and
# an fsync before every reply).
start_redis() {
    local name=$1 dir=$WORK/redis-$1 attempt
    mkdir -p "$dir"
    local persistence=(--appendonly no)
    [[ $name == always ]] && persistence=(--appendonly yes --appendfsync always)
    for attempt in 1 2 3; do
        REDIS_PORT=$(free_port)
        local cmd=(redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" "${persistence[@]}"
            --dir "$dir" --logfile "$WORK/logs/redis-$name.log")
        ((attempt > 1)) || record "${cmd[@]}"
        setsid "${cmd[@]}" >/dev/null 2>&1 &
        REDIS_PID=$!
        local deadline=$((SECONDS + 10))
        until [[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; do
            if ! kill -0 "$REDIS_PID" 2>/dev/null; then
                wait "$REDIS_PID" 2>/dev/null || true
                REDIS_PID=
                # Someone took the port meanwhile: another one.
                tail -n 3 "$WORK/logs/redis-$name.log" | grep -q 'Address already in use' &&
                    ((attempt < 3)) &&
                    continue 2
                fail "redis-server ($name) exited during start-up: $(tail -n 5 "$WORK/logs/redis-$name.log")"
            fi
            ((SECONDS < deadline)) || fail "redis-server ($name) did not answer within 10 s"
            sleep 0.1
        done
        return 0
    done
}

stop_redis() {
    [[ -n $REDIS_PID ]] || return 0
    kill -TERM "$REDIS_PID" 2>/dev/null || true
    wait_for_exit "$REDIS_PID" 30 || kill -KILL "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=
    rm -rf "${WORK:?}/redis-"*
}

# Measures Redis INCRBY (persistence $1: "none" or "always") with redis-benchmark into $2 (its
# CSV: requests/s and latency percentiles), on a fresh server. redis-benchmark runs a number of
# requests, not a duration: a first, unmeasured run of 50,000 requests warms the server up and
# gives its rate, from which the measured run is sized to last about $DURATION.
measure_redis() {
    local name=$1 out=$2
    start_redis "$name"
    local base=(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$CONNECTIONS" --threads 2 -r "$KEYS" --csv)
    local cmd=("${base[@]}" -n 50000 INCRBY key:__rand_int__ 1)
    printf '%s   # warm-up and rate, not measured\n' "$(command_line "${cmd[@]}")" >>"$COMMANDS"
    local warm rate
    warm=$(run_measured "${cmd[@]}") || fail "redis-benchmark ($name, warm-up) failed"
    rate=$(awk -F '","' 'NR == 2 { print int($2) }' <<<"$warm")
    if ! [[ $rate =~ ^[0-9]+$ ]] || ((rate == 0)); then
        fail "no rate in redis-benchmark's output: $warm"
    fi
    local requests=$((rate * DURATION_SECS))
    cmd=("${base[@]}" -n "$requests" INCRBY key:__rand_int__ 1)
    record "${cmd[@]}"
    run_measured "${cmd[@]}" >"$out" || fail "redis-benchmark ($name) failed"
    printf '%s\n' "$requests" >"${out%.csv}.requests"
    stop_redis
}

# Measures the per-request upsert with pgbench against the PostgreSQL whose socket directory
# is $1 (the managed cluster of the sync-mode server, with the settings Tally's sync mode
# commits under: synchronous_commit on, the default), $CONNECTIONS clients on 2 threads, one
# transaction per increment, prepared statements; keys drawn uniformly from $KEYS, named apart
# from Tally's. Every transaction's latency goes to pgbench-<round>-log.* beside $2.
measure_pgbench() {
    local socket=$1 out=$2
    local script=$WORK/upsert.sql
    cat >"$script" <<'EOF'
\set k random(0, :keys - 1)
INSERT INTO counters (key, value) VALUES ('pgbench-' || :k, 1) ON CONFLICT (key) DO UPDATE SET value = counters.value + EXCLUDED.value;
EOF
    if [[ $COMMANDS != /dev/null ]]; then
        printf '# $WORK/upsert.sql, the per-request upsert:\n' >>"$COMMANDS"
        sed 's/^/#   /' "$script" >>"$COMMANDS"
    fi
    local base=(pgbench -h "$socket" -p 5432 -U tally -n -M prepared -c "$CONNECTIONS" -j 2
        -D "keys=$KEYS" -f "$script")
    local cmd=("${base[@]}" -T 2 tally)
    printf '%s   # warm-up, not measured\n' "$(command_line "${cmd[@]}")" >>"$COMMANDS"
    run_measured "${cmd[@]}" >/dev/null 2>&1 || fail "pgbench (warm-up) failed"
    cmd=("${base[@]}" -T "$DURATION_SECS" --log --log-prefix "${out%.txt}-log" tally)
    record "${cmd[@]}"
    run_measured "${cmd[@]}" >"$out" 2>>"$WORK/logs/pgbench.log" || fail "pgbench failed: $(tail -n 5 "$WORK/logs/pgbench.log")"
}
