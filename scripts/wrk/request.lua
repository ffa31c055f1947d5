-- wrk script for `ordertrack-load cpu` (embedded in the binary, see src/bin/ordertrack-load/cpu.rs):
-- one fixed request whose method and body come from WRK_METHOD and WRK_BODY; headers are given
-- with wrk's -H. Kept as a file so the request wrk sends can be read and rerun by hand.
local method = os.getenv("WRK_METHOD")
local body = os.getenv("WRK_BODY")
if method ~= nil and method ~= "" then
  wrk.method = method
end
if body ~= nil and body ~= "" then
  wrk.body = body
end
