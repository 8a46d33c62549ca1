// libFuzzer entry point for Herald's wire-format decoders: everything a broker, a subscriber or a direct-mode
// publisher parses from the network. Built by scripts/fuzz together with Sources/Herald/Protocol.
//
// The input is split into frames: each frame is a 2-byte big-endian length followed by that many bytes (the
// length is clipped to what is left), which lets the fuzzer explore multipart messages.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDecoders(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    var frames: [[UInt8]] = []
    var index = 0
    while index + 2 <= bytes.count, frames.count < 16 {
        let length = min(Int(bytes[index]) << 8 | Int(bytes[index + 1]), bytes.count - index - 2)
        frames.append(Array(bytes[(index + 2)..<(index + 2 + length)]))
        index += 2 + length
    }
    // Whatever the bytes, decoding returns a value or nil; it must never crash, hang or leak.
    if let request = BrokerRequest(frames: frames[...]) {
        if case .publish(let data) = request { precondition(DataFrames(frames: data.frames[...]) != nil) }
    }
    if let data = DataFrames(frames: frames[...]) {
        // What decodes must encode back to the same frames.
        precondition(data.frames == frames)
    }
    _ = LeaderRecord(decoding: bytes)
    _ = Topic(key: bytes)
    return 0
}
