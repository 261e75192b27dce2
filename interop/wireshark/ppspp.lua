-- PPSPP (RFC 7574, Peer-to-Peer Streaming Peer Protocol) dissector for Wireshark/tshark 4.x.
--
-- Written from RFC 7574 §4 (chunk addressing), §7 (protocol options) and §8 (UDP
-- encapsulation) and from p2pcdn's normative Construct definition (ppsp/peer/wire.py), not from
-- any other dissector. It decodes every message type of §8.2 Table 7 and every option of §7
-- Table 2.
--
-- The wire does not say how long a chunk specification, a hash or a signature is: the channel's
-- HANDSHAKE does (§7.6 hash function, §7.7 live signature algorithm, §7.8 chunk addressing
-- method, §7.11 chunk size). The dissector therefore keeps a context per channel, keyed by the
-- address and port of the peer that chose the channel ID plus the channel ID (a datagram is
-- addressed to the receiver's channel, §8.3). A HANDSHAKE with source channel C sent by S
-- gives the context of (S, C); a reply HANDSHAKE updates both ends. The contexts are reset
-- when a new capture file is opened (init routine), and the context a frame was dissected with
-- is remembered, so that dissecting again (GUI clicks, two passes) gives the same tree.
--
-- Default port: UDP 7777 (p2pcdn's default). Change it with the preference "ppspp.port"
-- (tshark -o ppspp.port:20200) or use "Decode As..." (tshark -d udp.port==20200,ppspp).
--
-- Malformed data (truncated messages, unknown message types or options, options out of
-- order) is reported as expert info "ppspp.malformed" (group Malformed, severity Error); the
-- rest of the datagram is not decoded, as RFC 7574 §3 discards it.

local ppspp = Proto("ppspp", "Peer-to-Peer Streaming Peer Protocol (RFC 7574)")

local MSG_NAMES = {
    [0] = "HANDSHAKE", [1] = "DATA", [2] = "ACK", [3] = "HAVE", [4] = "INTEGRITY",
    [5] = "PEX_RESv4", [6] = "PEX_REQ", [7] = "SIGNED_INTEGRITY", [8] = "REQUEST",
    [9] = "CANCEL", [10] = "CHOKE", [11] = "UNCHOKE", [12] = "PEX_RESv6", [13] = "PEX_REScert",
}
local OPT_NAMES = {
    [0] = "Version", [1] = "Minimum Version", [2] = "Swarm Identifier",
    [3] = "Content Integrity Protection Method", [4] = "Merkle Hash Tree Function",
    [5] = "Live Signature Algorithm", [6] = "Chunk Addressing Method",
    [7] = "Live Discard Window", [8] = "Supported Messages", [9] = "Chunk Size",
    [255] = "End Option",
}
local CIPM_NAMES = {
    [0] = "No integrity protection", [1] = "Merkle Hash Tree", [2] = "Sign All",
    [3] = "Unified Merkle Tree",
}
local MHF_NAMES = { [0] = "SHA-1", [1] = "SHA-224", [2] = "SHA-256", [3] = "SHA-384", [4] = "SHA-512" }
local MHF_SIZES = { [0] = 20, [1] = 28, [2] = 32, [3] = 48, [4] = 64 }
local LSA_NAMES = {
    [5] = "RSASHA1", [8] = "RSASHA256", [13] = "ECDSAP256SHA256", [14] = "ECDSAP384SHA384",
}
local CAM_NAMES = {
    [0] = "32-bit bins", [1] = "64-bit byte ranges", [2] = "32-bit chunk ranges",
    [3] = "64-bit bins", [4] = "64-bit chunk ranges",
}
-- Bytes of a chunk specification per CAM (§4) and whether it is a bin.
local CAM_SPEC = { [0] = 4, [1] = 16, [2] = 8, [3] = 8, [4] = 16 }
local VARIABLE_CHUNK_SIZE = 0xFFFFFFFF

local f = ppspp.fields
f.channel = ProtoField.uint32("ppspp.channel", "Destination Channel ID", base.HEX)
f.keepalive = ProtoField.bool("ppspp.keepalive", "Keep-alive")
f.message = ProtoField.bytes("ppspp.message", "Message")
f.type = ProtoField.uint8("ppspp.type", "Message Type", base.DEC, MSG_NAMES)
f.source_channel = ProtoField.uint32("ppspp.source_channel", "Source Channel ID", base.HEX)
f.close = ProtoField.bool("ppspp.close", "Explicit close (source channel 0)")
f.option = ProtoField.uint8("ppspp.option", "Option", base.DEC, OPT_NAMES)
f.version = ProtoField.uint8("ppspp.version", "Version")
f.min_version = ProtoField.uint8("ppspp.min_version", "Minimum Version")
f.swarm_id_len = ProtoField.uint16("ppspp.swarm_id_len", "Swarm ID Length")
f.swarm_id = ProtoField.bytes("ppspp.swarm_id", "Swarm ID")
f.cipm = ProtoField.uint8("ppspp.cipm", "Content Integrity Protection Method", base.DEC, CIPM_NAMES)
f.mhf = ProtoField.uint8("ppspp.mhf", "Merkle Hash Tree Function", base.DEC, MHF_NAMES)
f.lsa = ProtoField.uint8("ppspp.lsa", "Live Signature Algorithm", base.DEC, LSA_NAMES)
f.cam = ProtoField.uint8("ppspp.cam", "Chunk Addressing Method", base.DEC, CAM_NAMES)
f.ldw = ProtoField.uint64("ppspp.ldw", "Live Discard Window")
f.supported_len = ProtoField.uint8("ppspp.supported_len", "Supported Messages Length")
f.supported = ProtoField.bytes("ppspp.supported", "Supported Messages Bitmap")
f.chunk_size = ProtoField.uint32("ppspp.chunk_size", "Chunk Size")
f.bin = ProtoField.uint64("ppspp.bin", "Bin")
f.start = ProtoField.uint64("ppspp.start", "Start")
f["end"] = ProtoField.uint64("ppspp.end", "End")
f.timestamp = ProtoField.uint64("ppspp.timestamp", "Timestamp")
f.delay = ProtoField.uint64("ppspp.delay", "One-way Delay Sample (us)")
f.payload = ProtoField.bytes("ppspp.payload", "Chunk Data")
f.payload_len = ProtoField.uint32("ppspp.payload_len", "Chunk Data Length")
f.hash = ProtoField.bytes("ppspp.hash", "Hash")
f.signature = ProtoField.bytes("ppspp.signature", "Signature")
f.ipv4 = ProtoField.ipv4("ppspp.ipv4", "IPv4 Address")
f.ipv6 = ProtoField.ipv6("ppspp.ipv6", "IPv6 Address")
f.port = ProtoField.uint16("ppspp.port", "Port")
f.cert_len = ProtoField.uint16("ppspp.cert_len", "Certificate Size")
f.cert = ProtoField.bytes("ppspp.cert", "Membership Certificate (DER)")

local ef_malformed = ProtoExpert.new("ppspp.malformed", "Malformed PPSPP datagram",
    expert.group.MALFORMED, expert.severity.ERROR)
local ef_close = ProtoExpert.new("ppspp.close.expert", "Channel closed (HANDSHAKE with source channel 0)",
    expert.group.SEQUENCE, expert.severity.CHAT)
ppspp.experts = { ef_malformed, ef_close }

ppspp.prefs.port = Pref.uint("UDP port", 7777, "UDP port decoded as PPSPP (p2pcdn default 7777)")

-- ------------------------------------------------------------------------------ context

local function default_ctx()
    -- RFC 7574 defaults (§7.6, §7.8): 32-bit chunk ranges, SHA-256, ECDSA P-256 signatures;
    -- the chunk size is unknown until a Chunk Size option says it (ppsp/peer/wire.py).
    return { cam = 2, hash_size = 32, sig_size = 64, chunk_size = nil }
end

local function copy_ctx(c)
    return { cam = c.cam, hash_size = c.hash_size, sig_size = c.sig_size, chunk_size = c.chunk_size }
end

local contexts = {}      -- "ip:port/channel" -> context
local frame_ctx = {}     -- frame number -> context the frame was dissected with

function ppspp.init()
    contexts = {}
    frame_ctx = {}
end

local function key(addr, port, channel)
    return tostring(addr) .. ":" .. tostring(port) .. "/" .. tostring(channel)
end

-- Signature size of a live swarm (§8.9): fixed for ECDSA, the RSA modulus length otherwise
-- (swarm ID = algorithm octet + RFC 3110 DNSKEY public key). nil when unknown.
local function signature_size(alg, swarm)
    if alg == 13 then return 64 end
    if alg == 14 then return 96 end
    if (alg == 5 or alg == 8) and swarm ~= nil then
        local n = swarm:len()
        if n < 2 then return nil end
        local exp_len, off
        if swarm:get_index(1) == 0 then
            if n < 4 then return nil end
            exp_len, off = swarm:get_index(2) * 256 + swarm:get_index(3), 4
        else
            exp_len, off = swarm:get_index(1), 2
        end
        local modulus = n - off - exp_len
        if modulus <= 0 then return nil end
        return modulus
    end
    return nil
end

-- ------------------------------------------------------------------------------ helpers

local Malformed = {}

local function malformed(why)
    error({ malformed = why }, 0)
end

local function need(tvb, off, n, what)
    if tvb:len() < off + n then
        malformed(string.format("%s truncated: %d bytes needed at offset %d, %d left",
            what, n, off, math.max(tvb:len() - off, 0)))
    end
end

local TWO32 = 4294967296

-- The inclusive chunk range a 32-bit bin denotes (§4.2); Lua numbers are exact below 2^53.
local function bin32_range(b)
    local layer = 0
    local x = b
    while x % 2 == 1 and layer < 32 do
        x = (x - 1) / 2
        layer = layer + 1
    end
    local size = 2 ^ layer
    local start = math.floor(b / (2 * size)) * size
    return UInt64(start % TWO32, math.floor(start / TWO32)),
        UInt64((start + size - 1) % TWO32, math.floor((start + size - 1) / TWO32))
end

local ONE = UInt64(1)

local function bin64_range(b)
    local layer = 0
    while layer < 64 and b:rshift(layer):band(ONE) == ONE do
        layer = layer + 1
    end
    if layer >= 64 then
        return UInt64(0), UInt64.max()
    end
    local start = b:rshift(layer + 1):lshift(layer)
    return start, start + ONE:lshift(layer) - ONE
end

local function u64_str(v)
    return tostring(v)
end

-- Adds a chunk specification at off; returns its start, end (UInt64) and its size.
local function add_spec(tree, tvb, off, ctx)
    local cam = ctx.cam
    local size = CAM_SPEC[cam]
    need(tvb, off, size, "chunk specification")
    local s, e
    if cam == 0 then
        local b = tvb(off, 4):uint()
        tree:add(f.bin, tvb(off, 4), UInt64(b))
        s, e = bin32_range(b)
        tree:add(f.start, tvb(off, 4), s):set_generated()
        tree:add(f["end"], tvb(off, 4), e):set_generated()
    elseif cam == 3 then
        local b = tvb(off, 8):uint64()
        tree:add(f.bin, tvb(off, 8), b)
        s, e = bin64_range(b)
        tree:add(f.start, tvb(off, 8), s):set_generated()
        tree:add(f["end"], tvb(off, 8), e):set_generated()
    elseif cam == 2 then
        s, e = UInt64(tvb(off, 4):uint()), UInt64(tvb(off + 4, 4):uint())
        tree:add(f.start, tvb(off, 4), s)
        tree:add(f["end"], tvb(off + 4, 4), e)
    else -- 1 byte ranges, 4 chunk ranges: two 64-bit numbers
        s, e = tvb(off, 8):uint64(), tvb(off + 8, 8):uint64()
        tree:add(f.start, tvb(off, 8), s)
        tree:add(f["end"], tvb(off + 8, 8), e)
    end
    return s, e, size
end

local function hex_prefix(range, n)
    local b = range:bytes()
    local out = {}
    for i = 0, math.min(b:len(), n) - 1 do
        out[#out + 1] = string.format("%02x", b:get_index(i))
    end
    local s = table.concat(out)
    if b:len() > n then s = s .. "..." end
    return s
end

-- ------------------------------------------------------------------------------ HANDSHAKE

-- §7: options sorted by code, Version first, End last. Returns the new offset, the options
-- (a table of values) and a summary string.
local function dissect_options(tvb, off, tree)
    local opts = {}
    local last = -1
    local count = 0
    while true do
        count = count + 1
        if count > 300 then malformed("too many options") end
        need(tvb, off, 1, "protocol option")
        local code = tvb(off, 1):uint()
        if code == 255 then
            tree:add(f.option, tvb(off, 1), code)
            return off + 1, opts
        end
        if OPT_NAMES[code] == nil then
            malformed(string.format("unknown protocol option %d (§7 Table 2)", code))
        end
        if code <= last then
            malformed(string.format("option %d out of order or repeated (§7: sorted by code)", code))
        end
        last = code
        local vlen
        if code == 2 then
            need(tvb, off + 1, 2, "Swarm Identifier length")
            vlen = 2 + tvb(off + 1, 2):uint()
        elseif code == 7 then
            local cam = opts.cam
            if cam == nil then cam = 2 end
            if CAM_SPEC[cam] == nil then malformed("Live Discard Window after an unknown CAM") end
            vlen = (cam == 0 or cam == 2) and 4 or 8
        elseif code == 8 then
            need(tvb, off + 1, 1, "Supported Messages length")
            vlen = 1 + tvb(off + 1, 1):uint()
        elseif code == 9 then
            vlen = 4
        else
            vlen = 1
        end
        need(tvb, off + 1, vlen, OPT_NAMES[code])
        local ot = tree:add(f.option, tvb(off, 1 + vlen), code)
        local v = off + 1
        if code == 0 then
            opts.version = tvb(v, 1):uint(); ot:add(f.version, tvb(v, 1))
        elseif code == 1 then
            opts.min_version = tvb(v, 1):uint(); ot:add(f.min_version, tvb(v, 1))
        elseif code == 2 then
            local n = vlen - 2
            ot:add(f.swarm_id_len, tvb(v, 2))
            if n > 0 then
                ot:add(f.swarm_id, tvb(v + 2, n))
                opts.swarm = tvb(v + 2, n):bytes()
                opts.swarm_hex = hex_prefix(tvb(v + 2, n), 8)
            else
                ot:add(f.swarm_id, tvb(v + 2, 0))
                opts.swarm = ByteArray.new()
                opts.swarm_hex = ""
            end
        elseif code == 3 then
            opts.cipm = tvb(v, 1):uint(); ot:add(f.cipm, tvb(v, 1))
        elseif code == 4 then
            opts.mhf = tvb(v, 1):uint(); ot:add(f.mhf, tvb(v, 1))
        elseif code == 5 then
            opts.lsa = tvb(v, 1):uint(); ot:add(f.lsa, tvb(v, 1))
        elseif code == 6 then
            opts.cam = tvb(v, 1):uint(); ot:add(f.cam, tvb(v, 1))
        elseif code == 7 then
            if vlen == 4 then
                ot:add(f.ldw, tvb(v, 4), UInt64(tvb(v, 4):uint()))
            else
                ot:add(f.ldw, tvb(v, 8), tvb(v, 8):uint64())
            end
        elseif code == 8 then
            ot:add(f.supported_len, tvb(v, 1))
            if vlen > 1 then
                ot:add(f.supported, tvb(v + 1, vlen - 1))
            else
                ot:add(f.supported, tvb(v + 1, 0))
            end
        elseif code == 9 then
            opts.chunk_size = tvb(v, 4):uint(); ot:add(f.chunk_size, tvb(v, 4))
        end
        off = off + 1 + vlen
    end
end

-- The context after a handshake carrying opts (ppsp/peer/messages.py WireContext.updated_by);
-- nil and a reason when it names a layout nobody can decode.
local function updated(ctx, opts)
    local c = copy_ctx(ctx)
    if opts.cam ~= nil then
        if CAM_SPEC[opts.cam] == nil then return nil, "unknown chunk addressing method " .. opts.cam end
        c.cam = opts.cam
    end
    if opts.mhf ~= nil then
        if MHF_SIZES[opts.mhf] == nil then return nil, "unknown merkle hash function " .. opts.mhf end
        c.hash_size = MHF_SIZES[opts.mhf]
    end
    if opts.lsa ~= nil and opts.swarm ~= nil then
        local s = signature_size(opts.lsa, opts.swarm)
        if s == nil then return nil, "unsupported live signature algorithm " .. opts.lsa end
        c.sig_size = s
    end
    if opts.chunk_size ~= nil then
        if opts.chunk_size == VARIABLE_CHUNK_SIZE then c.chunk_size = nil else c.chunk_size = opts.chunk_size end
    end
    return c
end

-- ------------------------------------------------------------------------------ datagram

local function range_text(s, e)
    return u64_str(s) .. "-" .. u64_str(e)
end

-- Where a DATA at off ends when more messages follow it (§8.6, wire.py _data_end); nil when
-- it takes the rest of the datagram.
local function data_end(tvb, off, ctx, s, e)
    if ctx.chunk_size == nil then return nil end
    local size = CAM_SPEC[ctx.cam]
    local head = off + 1 + size + 8
    if head > tvb:len() then return nil end
    if e < s then return nil end
    local n = tonumber(tostring(e - s)) + 1
    local bytes
    if ctx.cam == 1 then bytes = n else bytes = n * ctx.chunk_size end
    if head + bytes >= tvb:len() then return nil end
    return head + bytes
end

local function dissect_message(tvb, off, tree, ctx, st, pinfo)
    local t = tvb(off, 1):uint()
    local name = MSG_NAMES[t]
    if name == nil then
        malformed(string.format("unknown message type %d at offset %d (§8.2 Table 7)", t, off))
    end
    local mt = tree:add(tvb(off, 1), name)
    mt:add(f.type, tvb(off, 1))
    local p = off + 1
    local summary = name
    if t == 0 then
        need(tvb, p, 4, "HANDSHAKE source channel")
        local src = tvb(p, 4):uint()
        mt:add(f.source_channel, tvb(p, 4))
        local endoff, opts = dissect_options(tvb, p + 4, mt)
        if src == 0 then
            mt:add(f.close, tvb(p, 4), true):set_generated()
            mt:add_proto_expert_info(ef_close)
            summary = "HANDSHAKE close"
        else
            summary = string.format("HANDSHAKE src=0x%08x", src)
            if opts.swarm_hex ~= nil then summary = summary .. " swarm=" .. opts.swarm_hex end
        end
        st.handshake = { src = src, opts = opts }
        p = endoff
        if p < tvb:len() then
            local c, why = updated(ctx, opts)
            if c == nil then malformed(why) end
            st.ctx = c
        end
    elseif t == 1 or t == 2 or t == 3 or t == 8 or t == 9 then
        local s, e, n = add_spec(mt, tvb, p, ctx)
        summary = name .. " " .. range_text(s, e)
        if t == 1 then
            need(tvb, p + n, 8, "DATA timestamp")
            mt:add(f.timestamp, tvb(p + n, 8))
            local stop = data_end(tvb, off, ctx, s, e) or tvb:len()
            local dlen = stop - (p + n + 8)
            mt:add(f.payload_len, tvb(p + n + 8, 0), dlen):set_generated()
            mt:add(f.payload, tvb(p + n + 8, dlen))
            p = stop
        elseif t == 2 then
            need(tvb, p + n, 8, "ACK delay sample")
            mt:add(f.delay, tvb(p + n, 8))
            p = p + n + 8
        else
            p = p + n
        end
    elseif t == 4 then
        local s, e, n = add_spec(mt, tvb, p, ctx)
        need(tvb, p + n, ctx.hash_size, "INTEGRITY hash")
        mt:add(f.hash, tvb(p + n, ctx.hash_size))
        summary = name .. " " .. range_text(s, e)
        p = p + n + ctx.hash_size
    elseif t == 7 then
        local s, e, n = add_spec(mt, tvb, p, ctx)
        need(tvb, p + n, 8 + ctx.sig_size, "SIGNED_INTEGRITY timestamp and signature")
        mt:add(f.timestamp, tvb(p + n, 8))
        mt:add(f.signature, tvb(p + n + 8, ctx.sig_size))
        summary = name .. " " .. range_text(s, e)
        p = p + n + 8 + ctx.sig_size
    elseif t == 5 then
        need(tvb, p, 6, "PEX_RESv4")
        mt:add(f.ipv4, tvb(p, 4))
        mt:add(f.port, tvb(p + 4, 2))
        summary = name .. " " .. tostring(tvb(p, 4):ipv4()) .. ":" .. tvb(p + 4, 2):uint()
        p = p + 6
    elseif t == 12 then
        need(tvb, p, 18, "PEX_RESv6")
        mt:add(f.ipv6, tvb(p, 16))
        mt:add(f.port, tvb(p + 16, 2))
        summary = name .. " [" .. tostring(tvb(p, 16):ipv6()) .. "]:" .. tvb(p + 16, 2):uint()
        p = p + 18
    elseif t == 13 then
        need(tvb, p, 2, "PEX_REScert size")
        local n = tvb(p, 2):uint()
        mt:add(f.cert_len, tvb(p, 2))
        need(tvb, p + 2, n, "PEX_REScert certificate")
        if n > 0 then mt:add(f.cert, tvb(p + 2, n)) end
        p = p + 2 + n
    end
    -- PEX_REQ, CHOKE, UNCHOKE have no body.
    mt:set_len(p - off)
    return p, summary
end

local function remember_handshake(pinfo, channel, hs, ctx_before)
    -- §3.1: a HANDSHAKE with source channel C from S sets the context of datagrams sent to
    -- (S, C); a reply (sent to the initiator's channel) carries the responder's options, which
    -- apply to both directions.
    if hs.src == 0 then return end
    local c = updated(ctx_before, hs.opts)
    if c == nil then return end
    contexts[key(pinfo.src, pinfo.src_port, hs.src)] = c
    if channel ~= 0 then
        contexts[key(pinfo.dst, pinfo.dst_port, channel)] = c
    end
end

function ppspp.dissector(tvb, pinfo, tree)
    local len = tvb:len()
    pinfo.cols.protocol = "PPSPP"
    local root = tree:add(ppspp, tvb(), "PPSPP")
    if len < 4 then
        root:add_proto_expert_info(ef_malformed,
            string.format("Malformed PPSPP datagram: %d bytes, no 4-byte channel ID (§8.3)", len))
        pinfo.cols.info = "PPSPP [malformed: no channel ID]"
        return len
    end
    local channel = tvb(0, 4):uint()
    root:add(f.channel, tvb(0, 4))
    local info = { string.format("chan=0x%08x", channel) }
    if len == 4 then
        root:add(f.keepalive, tvb(0, 4), true):set_generated()
        pinfo.cols.info = info[1] .. " KEEPALIVE"
        return len
    end

    local ctx = frame_ctx[pinfo.number]
    if ctx == nil then
        ctx = default_ctx()
        if channel ~= 0 then
            ctx = contexts[key(pinfo.dst, pinfo.dst_port, channel)] or ctx
        end
        if not pinfo.visited then frame_ctx[pinfo.number] = ctx end
    end

    local st = { ctx = ctx }
    local off = 4
    local count = 0
    local ok, err = pcall(function()
        while off < len do
            count = count + 1
            if count > 4096 then malformed("too many messages") end
            local before = st.ctx
            st.handshake = nil
            local summary
            off, summary = dissect_message(tvb, off, root, st.ctx, st, pinfo)
            info[#info + 1] = summary
            if st.handshake ~= nil and not pinfo.visited then
                remember_handshake(pinfo, channel, st.handshake, before)
            end
        end
    end)
    if not ok then
        local why
        if type(err) == "table" and err.malformed ~= nil then
            why = err.malformed
        else
            why = "decoding error: " .. tostring(err)
        end
        root:add_proto_expert_info(ef_malformed, "Malformed PPSPP datagram: " .. why)
        info[#info + 1] = "[malformed]"
    end
    pinfo.cols.info = table.concat(info, ", ")
    return len
end

local udp_table = DissectorTable.get("udp.port")
local registered_port = 0

local function register_port()
    if registered_port ~= 0 then udp_table:remove(registered_port, ppspp) end
    registered_port = ppspp.prefs.port
    if registered_port ~= 0 then udp_table:add(registered_port, ppspp) end
end

function ppspp.prefs_changed()
    if ppspp.prefs.port ~= registered_port then register_port() end
end

register_port()
udp_table:add_for_decode_as(ppspp)
