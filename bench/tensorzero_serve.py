"""Run TensorZero's gateway (embedded in its pip wheel) for bench/run.py.

``tensorzero._start_http_gateway`` starts the Rust gateway inside this process on
127.0.0.1 and a port of its choosing, with no database; this writes the base URL it
got to the file named second and keeps the process (and the gateway) alive until
SIGTERM.  Usage: python tensorzero_serve.py CONFIG.toml URL_FILE
"""
import os
import signal
import sys

import tensorzero


def main() -> None:
    config, url_file = sys.argv[1], sys.argv[2]
    gw = tensorzero._start_http_gateway(config_file=config, clickhouse_url=None, postgres_url=None,
                                        valkey_url=None, async_setup=False)
    tmp = url_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(gw.base_url)
    os.replace(tmp, url_file)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            signal.pause()
    finally:
        gw.close()


if __name__ == "__main__":
    main()
