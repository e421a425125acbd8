-- append_once.lua: append an item to an inbox unless its idempotency key was appended before.
--
-- Key schema (names built by inbox/redis.py; {inbox:<id>} is the Cluster hash tag):
--   <prefix>:{inbox:<id>}:items        STREAM  the inbox, newest last, trimmed to ~MAXLEN
--   <prefix>:{inbox:<id>}:key:<key>    STRING  the item id stored for that idempotency key
-- KEYS[1] the items stream   KEYS[2] the idempotency marker
-- ARGV[1] MAXLEN (approximate)   ARGV[2] marker TTL in ms   ARGV[3..] the item's field/value pairs
-- Returns the id of the item: the new one, or the one the marker already names.
local existing = redis.call('GET', KEYS[2])
if existing then return existing end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
redis.call('SET', KEYS[2], id, 'PX', ARGV[2])
return id
