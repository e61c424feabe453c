"""nginx as the floor for any reverse proxy: the Debian package, a plain ``proxy_pass`` with upstream keep-alive.

``bench/run.py`` writes this configuration into its temporary directory and runs
``nginx -p DIR -e DIR/error.log -c DIR/nginx.conf -g 'daemon off;'``: one process (``master_process off``),
so the CPU read from /proc is all of nginx; pid, logs and temporary files stay in DIR.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CONFIG = """\
master_process off;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections 8192;
}}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    upstream u {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
    }}

    server {{
        listen 127.0.0.1:{port} backlog=1024;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://u;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None)


def nginx_version(binary: str) -> str:
    # `nginx -v` prints "nginx version: nginx/1.22.1" on stderr.
    output = subprocess.run([binary, "-v"], capture_output=True, text=True)
    return (output.stderr or output.stdout).strip().removeprefix("nginx version: ")


def nginx_command(binary: str, workdir: Path, *, port: int, upstream_port: int) -> list[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(CONFIG.format(dir=workdir, port=port, upstream_port=upstream_port))
    return [binary, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf), "-g", "daemon off;"]
