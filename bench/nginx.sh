# Sourced by the bench scripts that measure nginx beside the gateway: the one configuration they
# share, limit_req keyed by the x-user header (far above the load, so every request is counted
# and passes, as the gateway's bench/policy.yaml does) and proxy_pass over keep-alive
# connections to the upstream.

# nginx_conf FILE WORK MAIN LISTEN UPSTREAM ACCESS_LOG — writes the configuration to FILE, with
# WORK for nginx's files, MAIN for the top-level directives (workers, daemon), and ACCESS_LOG
# a path or `off`.
nginx_conf() {
  local file=$1 work=$2 main=$3 listen=$4 upstream=$5 access_log=$6
  cat > "$file" <<CONF
$main
error_log $work/logs/error.log warn;
pid $work/nginx.pid;
events { worker_connections 4096; }
http {
  access_log $access_log;
  client_body_temp_path $work/body;
  proxy_temp_path $work/proxy;
  limit_req_zone \$http_x_user zone=users:10m rate=100000r/s;
  upstream echo { server $upstream; keepalive 128; }
  server {
    listen $listen;
    location / {
      limit_req zone=users burst=100000 nodelay;
      proxy_pass http://echo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
}
