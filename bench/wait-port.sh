# Sourced by the benchmarks that start `dlora serve` in the background: wait_port LOG PID waits (up to 60 s) for
# the server's "serving … on http://127.0.0.1:PORT" line in LOG and prints PORT; it fails, with the log on stderr,
# when the process PID exits first or the time runs out.
wait_port() {
    local log=$1 pid=$2 p=""
    for _ in $(seq 1 600); do
        p=$(sed -n 's/.*serving .* on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -1)
        [ -n "$p" ] && { echo "$p"; return 0; }
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    cat "$log" >&2
    return 1
}
