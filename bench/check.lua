-- wrk: POST /v1/check for a random one of 10,000 users.
math.randomseed(os.time())
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
request = function()
  local body = '{"method":"GET","path":"/items","headers":{"x-user":"user-'
    .. math.random(1, 10000) .. '"}}'
  return wrk.format("POST", "/v1/check", nil, body)
end
