-- PPSP-TP binary encoding dissector for Wireshark/tshark 4.x (UDP and TCP, port 7846).
--
-- Written from p2pcdn's specification of the encoding, docs/ppsp-tp-binary.md (the 24-byte
-- header of draft-gu-ppsp-tracker-protocol-02 §5.2.1 and TLV bodies carrying the elements of
-- RFC 7846 §3.2 and p2pcdn's extensions), not from any other dissector. Section numbers below
-- are that document's.
--
-- Every method of §3 and every TLV type of §8 is decoded. Over TCP, messages are framed by the
-- header's Message Length (§11.2) and reassembled across segments. Over UDP a datagram carries
-- one message or one fragment of one (§10); fragments are shown as such, not reassembled.
--
-- Preferences: "ppsptp.udp_port" and "ppsptp.tcp_port" (default 7846); "Decode As..." works on
-- both tables. Malformed data (bad token, wrong length, truncated or overrunning values, unknown
-- comprehension-required TLVs, unknown enumerated values) is reported as expert info
-- "ppsptp.malformed" (group Malformed, severity Error) instead of a Lua error.

local ppsptp = Proto("ppsptp", "PPSP Tracker Protocol, binary encoding")

local TOKEN = 0xd0505374
local HEADER_SIZE = 24
local MAX_MESSAGE = 16 * 1024 * 1024

local METHODS = {
    [0x0800] = "CONNECT", [0x0805] = "FIND", [0x0807] = "STAT_QUERY", [0x0808] = "STAT_REPORT",
    [0x0820] = "PUSH_HINT", [0x0821] = "GLOBAL_INFO",
    [0x8800] = "SUCCESSFUL", [0x8810] = "MESSAGE_FORBIDDEN", [0x8811] = "OBJECT_NOT_FOUND",
    [0x8812] = "AUTHENTICATION_REQUIRED", [0x8813] = "PAYMENT_REQUIRED",
    [0x88F0] = "INVALID_SYNTAX", [0x88F1] = "VERSION_NOT_SUPPORTED",
    [0x88F2] = "MESSAGE_NOT_SUPPORTED", [0x88F3] = "TEMPORARILY_OVERLOADED",
    [0x88F4] = "INTERNAL_ERROR",
}
local TLV_NAMES = {
    [0x0001] = "PEER_ID", [0x0002] = "SWARM_ID", [0x0003] = "SWARM_ACTION", [0x0004] = "PEER_NUM",
    [0x0005] = "PEER_ADDR", [0x0006] = "STREAM_STATS", [0x0007] = "SWARM_RESULT",
    [0x0008] = "PEER_INFO", [0x8001] = "ROLE", [0x8002] = "AREA", [0x8003] = "RANGES",
    [0x8004] = "AVAILABILITY", [0x8005] = "AVAILABILITY_DELTA", [0x8006] = "PUSH_HINT",
    [0x8007] = "SWARM_POPULARITY",
}
local ACTIONS = { [1] = "JOIN", [2] = "LEAVE" }
local PEER_MODES = { [1] = "SEEDER", [2] = "LEECH" }
local ADDR_TYPES = { [1] = "HOST", [2] = "REFLEXIVE", [3] = "PROXY" }
local FAMILIES = { [4] = "IPv4", [6] = "IPv6" }
local ROLES = { [1] = "SOURCE", [2] = "CACHER", [3] = "CSC" }
local UNITS = { [1] = "CHUNKS", [2] = "SECONDS" }
local RESULTS = { [0] = "SUCCESSFUL", [1] = "FAILED" }

-- §7: where each TLV type may appear. Response methods share one body.
local REQUEST_BODIES = {
    [0x0800] = { [0x0001] = true, [0x0003] = true, [0x0004] = true, [0x0005] = true,
        [0x8001] = true, [0x8002] = true, [0x8004] = true },
    [0x0805] = { [0x0001] = true, [0x0002] = true, [0x0004] = true, [0x8002] = true, [0x8003] = true },
    [0x0807] = { [0x0001] = true, [0x0002] = true },
    [0x0808] = { [0x0001] = true, [0x0006] = true, [0x8004] = true, [0x8005] = true },
    [0x0820] = { [0x8006] = true },
    [0x0821] = { [0x8007] = true },
}
local RESPONSE_BODY = { [0x0005] = true, [0x0007] = true, [0x8006] = true, [0x8007] = true }
local SWARM_RESULT_BODY = { [0x0008] = true }
local PEER_INFO_BODY = { [0x0005] = true, [0x8001] = true, [0x8002] = true, [0x8003] = true }

local f = ppsptp.fields
f.token = ProtoField.uint32("ppsptp.token", "Token", base.HEX)
f.version = ProtoField.uint8("ppsptp.version", "Version")
f.reserved = ProtoField.uint8("ppsptp.reserved", "Reserved", base.HEX)
f.method = ProtoField.uint16("ppsptp.method", "Method", base.HEX, METHODS)
f.tid = ProtoField.uint64("ppsptp.tid", "Transaction ID")
f.fragment = ProtoField.uint32("ppsptp.fragment", "Fragment", base.HEX)
f.frag_last = ProtoField.bool("ppsptp.fragment.last", "Last fragment", 32, nil, 0x40000000)
f.frag_offset = ProtoField.uint32("ppsptp.fragment.offset", "Fragment offset", base.DEC, nil, 0x00FFFFFF)
f.length = ProtoField.uint32("ppsptp.length", "Message Length")
f.fragment_data = ProtoField.bytes("ppsptp.fragment_data", "Fragment data")
f.tlv_type = ProtoField.uint16("ppsptp.tlv.type", "TLV Type", base.HEX, TLV_NAMES)
f.tlv_optional = ProtoField.bool("ppsptp.tlv.optional", "Optional (O)", 16, nil, 0x8000)
f.tlv_length = ProtoField.uint32("ppsptp.tlv.length", "TLV Length")
f.tlv_unknown = ProtoField.bytes("ppsptp.tlv.unknown", "Skipped value")
f.id_raw = ProtoField.bool("ppsptp.id.raw", "Raw bytes (H)", 16, nil, 0x8000)
f.id_length = ProtoField.uint16("ppsptp.id.length", "ID Length", base.DEC, nil, 0x7FFF)
f.peer_id = ProtoField.string("ppsptp.peer_id", "Peer ID")
f.swarm_id = ProtoField.string("ppsptp.swarm_id", "Swarm ID")
f.action = ProtoField.uint8("ppsptp.action", "Action", base.DEC, ACTIONS)
f.peer_mode = ProtoField.uint8("ppsptp.peer_mode", "Peer Mode", base.DEC, PEER_MODES)
f.peer_count = ProtoField.uint32("ppsptp.peer_count", "Peer Count")
f.present = ProtoField.uint8("ppsptp.present", "Present", base.HEX)
f.ability_nat = ProtoField.string("ppsptp.ability_nat", "Ability NAT")
f.concurrent_links = ProtoField.uint32("ppsptp.concurrent_links", "Concurrent Links")
f.online_time = ProtoField.uint64("ppsptp.online_time", "Online Time (s)")
f.upload_bandwidth = ProtoField.uint64("ppsptp.upload_bandwidth", "Upload Bandwidth (kbps)")
f.addr_type = ProtoField.uint8("ppsptp.addr.type", "Address Type", base.DEC, ADDR_TYPES)
f.addr_family = ProtoField.uint8("ppsptp.addr.family", "Family", base.DEC, FAMILIES)
f.addr_ipv4 = ProtoField.ipv4("ppsptp.addr.ipv4", "Address")
f.addr_ipv6 = ProtoField.ipv6("ppsptp.addr.ipv6", "Address")
f.addr_port = ProtoField.uint16("ppsptp.addr.port", "Port")
f.addr_priority = ProtoField.uint32("ppsptp.addr.priority", "Priority")
f.addr_connection = ProtoField.string("ppsptp.addr.connection", "Connection")
f.addr_asn = ProtoField.string("ppsptp.addr.asn", "ASN")
f.addr_protocol = ProtoField.string("ppsptp.addr.peer_protocol", "Peer Protocol")
f.uploaded = ProtoField.uint64("ppsptp.uploaded_bytes", "Uploaded Bytes")
f.downloaded = ProtoField.uint64("ppsptp.downloaded_bytes", "Downloaded Bytes")
f.available_bandwidth = ProtoField.uint64("ppsptp.available_bandwidth", "Available Bandwidth")
f.result = ProtoField.uint8("ppsptp.result", "Result", base.DEC, RESULTS)
f.flags = ProtoField.uint8("ppsptp.flags", "Flags", base.HEX)
f.peer_group = ProtoField.bool("ppsptp.flags.peer_group", "Peer group present (G)", 8, nil, 0x01)
f.role = ProtoField.uint8("ppsptp.role", "Role", base.DEC, ROLES)
f.area = ProtoField.string("ppsptp.area", "Area")
f.ranges_wide = ProtoField.bool("ppsptp.ranges.wide", "64-bit (W)", 16, nil, 0x8000)
f.ranges_count = ProtoField.uint16("ppsptp.ranges.count", "Count", base.DEC, nil, 0x7FFF)
f.range_start = ProtoField.uint64("ppsptp.range.start", "Start")
f.range_end = ProtoField.uint64("ppsptp.range.end", "End")
f.unit = ProtoField.uint8("ppsptp.unit", "Unit", base.DEC, UNITS)
f.priority = ProtoField.uint32("ppsptp.priority", "Priority")
f.head_start = ProtoField.uint64("ppsptp.head_start", "Head Start")
f.head_end = ProtoField.uint64("ppsptp.head_end", "Head End")
f.expires_in = ProtoField.double("ppsptp.expires_in", "Expires In (s)")
f.viewers = ProtoField.uint32("ppsptp.viewers", "Viewers")
f.join_rate = ProtoField.double("ppsptp.join_rate", "Join Rate (per minute)")
f.text_length = ProtoField.uint8("ppsptp.text.length", "Text Length")

local ef_malformed = ProtoExpert.new("ppsptp.malformed", "Malformed PPSP-TP message",
    expert.group.MALFORMED, expert.severity.ERROR)
local ef_skipped = ProtoExpert.new("ppsptp.skipped", "Optional TLV skipped (unknown here)",
    expert.group.UNDECODED, expert.severity.NOTE)
local ef_error = ProtoExpert.new("ppsptp.error_response", "Error response",
    expert.group.RESPONSE_CODE, expert.severity.NOTE)
ppsptp.experts = { ef_malformed, ef_skipped, ef_error }

ppsptp.prefs.udp_port = Pref.uint("UDP port", 7846, "UDP port decoded as PPSP-TP binary")
ppsptp.prefs.tcp_port = Pref.uint("TCP port", 7846, "TCP port decoded as PPSP-TP binary")

-- ------------------------------------------------------------------------------ helpers

local function malformed(why)
    error({ malformed = why }, 0)
end

local function need(p, n, stop, what)
    if p + n > stop then
        malformed(string.format("%s runs past its end (%d bytes needed at offset %d, %d left)",
            what, n, p, math.max(stop - p, 0)))
    end
end

local function enum(tbl, v, what)
    if tbl[v] == nil then malformed(string.format("unknown %s %d (§8)", what, v)) end
    return v
end

local HEX = "0123456789abcdef"

-- Strict UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF), as the
-- codec's decoder; invalid text is malformed (§6.1, §6.2).
local function utf8_text(range, what)
    local b = range:bytes()
    local n = b:len()
    local i = 0
    while i < n do
        local c = b:get_index(i)
        local extra, lo, hi = 0, 0x80, 0xBF
        if c < 0x80 then
            extra = 0
        elseif c >= 0xC2 and c <= 0xDF then
            extra = 1
        elseif c >= 0xE0 and c <= 0xEF then
            extra = 2
            if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
        elseif c >= 0xF0 and c <= 0xF4 then
            extra = 3
            if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
        else
            malformed(what .. " is not valid UTF-8")
        end
        if i + extra > n - 1 and extra > 0 then
            malformed(what .. " is not valid UTF-8 (truncated sequence)")
        end
        for k = 1, extra do
            local x = b:get_index(i + k)
            local l, h = 0x80, 0xBF
            if k == 1 then l, h = lo, hi end
            if x < l or x > h then malformed(what .. " is not valid UTF-8") end
        end
        i = i + 1 + extra
    end
    return range:string(ENC_UTF_8)
end

local function hex_of(range)
    local b = range:bytes()
    local out = {}
    for i = 0, b:len() - 1 do
        local x = b:get_index(i)
        out[#out + 1] = HEX:sub(math.floor(x / 16) + 1, math.floor(x / 16) + 1)
            .. HEX:sub(x % 16 + 1, x % 16 + 1)
    end
    return table.concat(out)
end

-- §6.1 ID: H bit, 15-bit length (<= 1024), value; H = 1 shown as lowercase hex.
local function add_id(tree, tvb, p, stop, field, label)
    need(p, 2, stop, label)
    local word = tvb(p, 2):uint()
    local n = word % 32768
    local raw = word >= 32768
    if n > 1024 then malformed(string.format("%s of %d bytes, at most 1024 (§6.1)", label, n)) end
    need(p + 2, n, stop, label)
    local value
    if n == 0 then
        value = ""
    elseif raw then
        value = hex_of(tvb(p + 2, n))
    else
        value = utf8_text(tvb(p + 2, n), label)
    end
    local it = tree:add(field, tvb(p, 2 + n), value)
    it:add(f.id_raw, tvb(p, 2))
    it:add(f.id_length, tvb(p, 2))
    return p + 2 + n, value
end

-- §6.2 text: length octet then UTF-8.
local function add_text(tree, tvb, p, stop, field, label)
    need(p, 1, stop, label)
    local n = tvb(p, 1):uint()
    need(p + 1, n, stop, label)
    local value = ""
    if n > 0 then value = utf8_text(tvb(p + 1, n), label) end
    local it = tree:add(field, tvb(p, 1 + n), value)
    it:add(f.text_length, tvb(p, 1))
    return p + 1 + n
end

-- §6.3 range list.
local function add_ranges(tree, tvb, p, stop, label)
    need(p, 2, stop, label)
    local word = tvb(p, 2):uint()
    local count = word % 32768
    local wide = word >= 32768
    local w = wide and 8 or 4
    need(p + 2, count * 2 * w, stop, label)
    local lt = tree:add(tvb(p, 2 + count * 2 * w), string.format("%s: %d range(s)", label, count))
    lt:add(f.ranges_wide, tvb(p, 2))
    lt:add(f.ranges_count, tvb(p, 2))
    local q = p + 2
    for _ = 1, count do
        local s, e
        if wide then
            s, e = tvb(q, 8):uint64(), tvb(q + 8, 8):uint64()
        else
            s, e = UInt64(tvb(q, 4):uint()), UInt64(tvb(q + 4, 4):uint())
        end
        if s > e then malformed("range start " .. tostring(s) .. " exceeds end " .. tostring(e)) end
        local rt = lt:add(tvb(q, 2 * w), "chunks " .. tostring(s) .. "-" .. tostring(e))
        rt:add(f.range_start, tvb(q, w), s)
        rt:add(f.range_end, tvb(q + w, w), e)
        q = q + 2 * w
    end
    return q
end

local function exact(q, stop, what)
    if q ~= stop then
        malformed(string.format("%s: %d bytes left over in its value (§5)", what, stop - q))
    end
end

local function check_double(v, what)
    if v ~= v or v == math.huge or v == -math.huge or v < 0 then
        malformed(what .. " is not a finite non-negative number")
    end
end

-- ------------------------------------------------------------------------------ TLV values

local dissect_tlvs -- forward

local function v_peer_num(t, tvb, p, stop)
    need(p, 5, stop, "PEER_NUM")
    t:add(f.peer_count, tvb(p, 4))
    local present = tvb(p + 4, 1):uint()
    t:add(f.present, tvb(p + 4, 1))
    if present >= 16 then malformed(string.format("PEER_NUM present bits 0x%02x (§8.3)", present)) end
    local q = p + 5
    if present % 2 == 1 then q = add_text(t, tvb, q, stop, f.ability_nat, "ability_nat") end
    if math.floor(present / 2) % 2 == 1 then
        need(q, 4, stop, "concurrent_links"); t:add(f.concurrent_links, tvb(q, 4)); q = q + 4
    end
    if math.floor(present / 4) % 2 == 1 then
        need(q, 8, stop, "online_time"); t:add(f.online_time, tvb(q, 8)); q = q + 8
    end
    if math.floor(present / 8) % 2 == 1 then
        need(q, 8, stop, "upload_bandwidth"); t:add(f.upload_bandwidth, tvb(q, 8)); q = q + 8
    end
    return q
end

local function v_peer_addr(t, tvb, p, stop)
    need(p, 2, stop, "PEER_ADDR")
    enum(ADDR_TYPES, tvb(p, 1):uint(), "address type")
    t:add(f.addr_type, tvb(p, 1))
    local family = enum(FAMILIES, tvb(p + 1, 1):uint(), "address family")
    t:add(f.addr_family, tvb(p + 1, 1))
    local q = p + 2
    local text
    if family == 4 then
        need(q, 4, stop, "IPv4 address"); t:add(f.addr_ipv4, tvb(q, 4))
        text = tostring(tvb(q, 4):ipv4()); q = q + 4
    else
        need(q, 16, stop, "IPv6 address"); t:add(f.addr_ipv6, tvb(q, 16))
        text = "[" .. tostring(tvb(q, 16):ipv6()) .. "]"; q = q + 16
    end
    need(q, 7, stop, "PEER_ADDR port, priority, present")
    t:add(f.addr_port, tvb(q, 2))
    text = text .. ":" .. tvb(q, 2):uint()
    t:add(f.addr_priority, tvb(q + 2, 4))
    local present = tvb(q + 6, 1):uint()
    t:add(f.present, tvb(q + 6, 1))
    if present >= 8 then malformed(string.format("PEER_ADDR present bits 0x%02x (§8.4)", present)) end
    q = q + 7
    if present % 2 == 1 then q = add_text(t, tvb, q, stop, f.addr_connection, "connection") end
    if math.floor(present / 2) % 2 == 1 then q = add_text(t, tvb, q, stop, f.addr_asn, "asn") end
    if math.floor(present / 4) % 2 == 1 then q = add_text(t, tvb, q, stop, f.addr_protocol, "peer_protocol") end
    t:append_text(" " .. text)
    return q
end

-- Decodes the value of one TLV of a known type; returns the end of what it consumed.
local function dissect_value(typ, t, tvb, p, stop, pinfo, sum)
    if typ == 0x0001 then
        local q, v = add_id(t, tvb, p, stop, f.peer_id, "PEER_ID")
        sum.peer = sum.peer or v
        t:append_text(": " .. v)
        return q
    elseif typ == 0x0002 then
        local q, v = add_id(t, tvb, p, stop, f.swarm_id, "SWARM_ID")
        sum.swarms = sum.swarms + 1
        t:append_text(": " .. v)
        return q
    elseif typ == 0x0003 then
        need(p, 2, stop, "SWARM_ACTION")
        local a = enum(ACTIONS, tvb(p, 1):uint(), "action")
        t:add(f.action, tvb(p, 1))
        enum(PEER_MODES, tvb(p + 1, 1):uint(), "peer_mode")
        t:add(f.peer_mode, tvb(p + 1, 1))
        sum.swarms = sum.swarms + 1
        t:append_text(": " .. ACTIONS[a])
        return (add_id(t, tvb, p + 2, stop, f.swarm_id, "swarm ID"))
    elseif typ == 0x0004 then
        return v_peer_num(t, tvb, p, stop)
    elseif typ == 0x0005 then
        return v_peer_addr(t, tvb, p, stop)
    elseif typ == 0x0006 then
        need(p, 28, stop, "STREAM_STATS")
        t:add(f.uploaded, tvb(p, 8))
        t:add(f.downloaded, tvb(p + 8, 8))
        t:add(f.available_bandwidth, tvb(p + 16, 8))
        t:add(f.concurrent_links, tvb(p + 24, 4))
        sum.swarms = sum.swarms + 1
        return (add_id(t, tvb, p + 28, stop, f.swarm_id, "swarm ID"))
    elseif typ == 0x0007 then
        need(p, 2, stop, "SWARM_RESULT")
        enum(RESULTS, tvb(p, 1):uint(), "result")
        t:add(f.result, tvb(p, 1))
        local flags = tvb(p + 1, 1):uint()
        local ft = t:add(f.flags, tvb(p + 1, 1))
        ft:add(f.peer_group, tvb(p + 1, 1))
        if flags > 1 then malformed(string.format("SWARM_RESULT flags 0x%02x (§8.6)", flags)) end
        local q = add_id(t, tvb, p + 2, stop, f.swarm_id, "swarm ID")
        sum.swarms = sum.swarms + 1
        if flags == 0 and q < stop then malformed("PEER_INFO without a peer group (§8.6)") end
        local n = dissect_tlvs(tvb, q, stop, t, SWARM_RESULT_BODY, pinfo, sum)
        t:append_text(string.format(": %d peer(s)", n))
        return stop
    elseif typ == 0x0008 then
        local q, v = add_id(t, tvb, p, stop, f.peer_id, "peer ID")
        t:append_text(": " .. v)
        sum.peers = sum.peers + 1
        dissect_tlvs(tvb, q, stop, t, PEER_INFO_BODY, pinfo, sum)
        return stop
    elseif typ == 0x8001 then
        need(p, 1, stop, "ROLE")
        local r = enum(ROLES, tvb(p, 1):uint(), "role")
        t:add(f.role, tvb(p, 1))
        t:append_text(": " .. ROLES[r])
        return p + 1
    elseif typ == 0x8002 then
        if stop - p > 255 then malformed("AREA of more than 255 bytes (§8.8)") end
        local v = ""
        if stop > p then v = utf8_text(tvb(p, stop - p), "AREA") end
        t:add(f.area, tvb(p, stop - p), v)
        t:append_text(": " .. v)
        return stop
    elseif typ == 0x8003 then
        return add_ranges(t, tvb, p, stop, "Ranges")
    elseif typ == 0x8004 then
        need(p, 2, stop, "AVAILABILITY")
        enum(PEER_MODES, tvb(p, 1):uint(), "peer_mode")
        t:add(f.peer_mode, tvb(p, 1))
        enum(ROLES, tvb(p + 1, 1):uint(), "role")
        t:add(f.role, tvb(p + 1, 1))
        local q = add_id(t, tvb, p + 2, stop, f.swarm_id, "swarm ID")
        sum.swarms = sum.swarms + 1
        return add_ranges(t, tvb, q, stop, "Held")
    elseif typ == 0x8005 then
        local q = add_id(t, tvb, p, stop, f.swarm_id, "swarm ID")
        sum.swarms = sum.swarms + 1
        q = add_ranges(t, tvb, q, stop, "Cached")
        return add_ranges(t, tvb, q, stop, "Evicted")
    elseif typ == 0x8006 then
        need(p, 29, stop, "PUSH_HINT")
        enum(UNITS, tvb(p, 1):uint(), "unit")
        t:add(f.unit, tvb(p, 1))
        t:add(f.priority, tvb(p + 1, 4))
        t:add(f.head_start, tvb(p + 5, 8))
        t:add(f.head_end, tvb(p + 13, 8))
        local e = tvb(p + 21, 8):float()
        check_double(e, "expires_in")
        t:add(f.expires_in, tvb(p + 21, 8))
        sum.swarms = sum.swarms + 1
        return (add_id(t, tvb, p + 29, stop, f.swarm_id, "swarm ID"))
    elseif typ == 0x8007 then
        need(p, 12, stop, "SWARM_POPULARITY")
        t:add(f.viewers, tvb(p, 4))
        local j = tvb(p + 4, 8):float()
        check_double(j, "join_rate")
        t:add(f.join_rate, tvb(p + 4, 8))
        local q = add_id(t, tvb, p + 12, stop, f.swarm_id, "swarm ID")
        sum.swarms = sum.swarms + 1
        return add_ranges(t, tvb, q, stop, "Rarest")
    end
    malformed("internal: no layout for TLV type " .. typ)
end

-- §5: a TLV sequence from p to stop; allowed says which types belong here. Returns the count.
dissect_tlvs = function(tvb, p, stop, tree, allowed, pinfo, sum)
    local count, skipped = 0, 0
    while p < stop do
        if count > 200000 then malformed("too many TLVs") end
        need(p, 6, stop, "TLV header")
        local typ = tvb(p, 2):uint()
        local len = tvb(p + 2, 4):uint()
        need(p + 6, len, stop, "TLV value")
        local name = TLV_NAMES[typ] or string.format("Unknown 0x%04x", typ)
        local t = tree:add(tvb(p, 6 + len), name)
        t:add(f.tlv_type, tvb(p, 2))
        t:add(f.tlv_optional, tvb(p, 2))
        t:add(f.tlv_length, tvb(p + 2, 4))
        local vstop = p + 6 + len
        if allowed[typ] then
            local q = dissect_value(typ, t, tvb, p + 6, vstop, pinfo, sum)
            exact(q, vstop, name)
            count = count + 1
        elseif typ >= 0x8000 then
            skipped = skipped + 1
            if skipped > 64 then malformed("more than 64 unknown optional TLVs (§5)") end
            if len > 0 then t:add(f.tlv_unknown, tvb(p + 6, len)) end
            t:add_proto_expert_info(ef_skipped)
        else
            malformed(string.format("comprehension-required TLV %s not defined here (§5)", name))
        end
        p = vstop
    end
    return count
end

-- ------------------------------------------------------------------------------ messages

-- Dissects one message (or fragment) at offset 0 of tvb (exactly the message's bytes).
local function dissect_message(tvb, pinfo, tree, datagram_len)
    local root = tree:add(ppsptp, tvb(), "PPSP-TP binary")
    local info
    local ok, err = pcall(function()
        local n = tvb:len()
        if n < HEADER_SIZE then
            malformed(string.format("%d bytes, the header alone takes %d (§2)", n, HEADER_SIZE))
        end
        local token = tvb(0, 4):uint()
        root:add(f.token, tvb(0, 4))
        if token ~= TOKEN then malformed(string.format("token 0x%08x is not 0xd0505374 (§2)", token)) end
        local version = tvb(4, 1):uint()
        root:add(f.version, tvb(4, 1))
        root:add(f.reserved, tvb(5, 1))
        local method = tvb(6, 2):uint()
        root:add(f.method, tvb(6, 2))
        local tid = tvb(8, 8):uint64()
        root:add(f.tid, tvb(8, 8))
        local fragment = tvb(16, 4):uint()
        local ft = root:add(f.fragment, tvb(16, 4))
        ft:add(f.frag_last, tvb(16, 4))
        ft:add(f.frag_offset, tvb(16, 4))
        local length = tvb(20, 4):uint()
        root:add(f.length, tvb(20, 4))
        local mname = METHODS[method] or string.format("method 0x%04x", method)
        info = mname .. " tid=" .. tostring(tid)
        if length < HEADER_SIZE then malformed("message length shorter than the header (§2)") end
        local expected = datagram_len or n
        if length ~= expected then
            malformed(string.format("message length %d, %d bytes carry it (§2)", length, expected))
        end
        if version ~= 1 then malformed(string.format("version %d is not 1 (§2)", version)) end
        if METHODS[method] == nil then malformed(string.format("unknown method 0x%04x (§3)", method)) end
        local offset = fragment % 0x1000000
        local last = math.floor(fragment / 0x40000000) % 2 == 1
        if not last or offset ~= 0 then
            info = info .. string.format(" fragment offset=%d%s", offset, last and " last" or "")
            if length > HEADER_SIZE then root:add(f.fragment_data, tvb(HEADER_SIZE, length - HEADER_SIZE)) end
            return
        end
        local allowed = REQUEST_BODIES[method] or RESPONSE_BODY
        if method >= 0x8800 and method ~= 0x8800 then root:add_proto_expert_info(ef_error, mname) end
        local sum = { swarms = 0, peers = 0 }
        dissect_tlvs(tvb, HEADER_SIZE, length, root, allowed, pinfo, sum)
        if sum.peer ~= nil then info = info .. " peer=" .. sum.peer end
        if sum.swarms > 0 then info = info .. " swarms=" .. sum.swarms end
        if sum.peers > 0 then info = info .. " peers=" .. sum.peers end
    end)
    if not ok then
        local why
        if type(err) == "table" and err.malformed ~= nil then why = err.malformed else why = tostring(err) end
        root:add_proto_expert_info(ef_malformed, "Malformed PPSP-TP message: " .. why)
        info = (info or "PPSP-TP") .. " [malformed]"
    end
    return info
end

local info_frame = -1 -- several messages in one TCP segment share the Info column

local function add_info(pinfo, text)
    if info_frame == pinfo.number then
        pinfo.cols.info = tostring(pinfo.cols.info) .. "; " .. text
    else
        pinfo.cols.info = text
        info_frame = pinfo.number
    end
end

function ppsptp.init()
    info_frame = -1
end

local function dissect_udp(tvb, pinfo, tree)
    if tvb:len() == 0 then return 0 end
    pinfo.cols.protocol = "PPSP-TP"
    add_info(pinfo, dissect_message(tvb, pinfo, tree, tvb:len()))
    return tvb:len()
end

-- §11.2 TCP framing: the header's Message Length; a bad token or length cannot be framed, so
-- the rest of the segment is taken as one malformed message.
local function tcp_pdu_len(tvb, pinfo, offset)
    local left = tvb:len() - offset
    if left < HEADER_SIZE then return HEADER_SIZE end
    local token = tvb(offset, 4):uint()
    local length = tvb(offset + 20, 4):uint()
    if token ~= TOKEN or length < HEADER_SIZE or length > MAX_MESSAGE then return left end
    return length
end

local function tcp_pdu(tvb, pinfo, tree)
    pinfo.cols.protocol = "PPSP-TP"
    add_info(pinfo, dissect_message(tvb, pinfo, tree, nil))
    return tvb:len()
end

local function dissect_tcp(tvb, pinfo, tree)
    dissect_tcp_pdus(tvb, tree, HEADER_SIZE, tcp_pdu_len, tcp_pdu)
    return tvb:len()
end

local ppsptp_tcp = Proto("ppsptp_tcp", "PPSP-TP binary over TCP")
function ppsptp_tcp.dissector(tvb, pinfo, tree) return dissect_tcp(tvb, pinfo, tree) end
local ppsptp_udp = Proto("ppsptp_udp", "PPSP-TP binary over UDP")
function ppsptp_udp.dissector(tvb, pinfo, tree) return dissect_udp(tvb, pinfo, tree) end

local udp_table = DissectorTable.get("udp.port")
local tcp_table = DissectorTable.get("tcp.port")
local udp_port, tcp_port = 0, 0

local function register_ports()
    if udp_port ~= 0 then udp_table:remove(udp_port, ppsptp_udp) end
    if tcp_port ~= 0 then tcp_table:remove(tcp_port, ppsptp_tcp) end
    udp_port, tcp_port = ppsptp.prefs.udp_port, ppsptp.prefs.tcp_port
    if udp_port ~= 0 then udp_table:add(udp_port, ppsptp_udp) end
    if tcp_port ~= 0 then tcp_table:add(tcp_port, ppsptp_tcp) end
end

function ppsptp.prefs_changed()
    if ppsptp.prefs.udp_port ~= udp_port or ppsptp.prefs.tcp_port ~= tcp_port then register_ports() end
end

register_ports()
udp_table:add_for_decode_as(ppsptp_udp)
tcp_table:add_for_decode_as(ppsptp_tcp)
