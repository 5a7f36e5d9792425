-- wrk: every request as a random one of 10,000 users (header x-user).
math.randomseed(os.time())
request = function()
  return wrk.format(nil, nil, { ["x-user"] = "user-" .. math.random(1, 10000) })
end
