internal import CZooKeeper
import FoundationEssentials
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

// The C client's callbacks run on its completion thread: they only convert C data, resume a
// continuation or update `SessionCore`, never block.

/// The session (global) watcher: its context is the handle's context, the `SessionCore`.
let sessionWatcher: watcher_fn = { _, type, state, _, context in
    guard type == ZOO_SESSION_EVENT, let context else { return }
    Unmanaged<SessionCore>.fromOpaque(context).takeUnretainedValue().sessionEvent(cState: state)
}

/// The watcher of one watch: its context is the watch id; the core is the handle's context.
let nodeWatcher: watcher_fn = { zh, type, _, path, context in
    guard let zh, let core = zoo_get_context(zh) else { return }
    let id = UInt(bitPattern: context)
    Unmanaged<SessionCore>.fromOpaque(core).takeUnretainedValue()
        .nodeEvent(id: id, type: type, path: path.map { String(cString: $0) })
}

/// What a completion reports back.
enum Reply: Sendable {
    case none
    case stat(Stat?)
    case data([UInt8], Stat)
    case string(String)
    case strings([String])
}

enum Outcome: Sendable {
    case success(Reply)
    case failure(Int32)
}

/// The `data` of one C call: resumed exactly once, by the completion or by the failed call.
final class CompletionBox: Sendable {
    let continuation: Mutex<CheckedContinuation<Outcome, Never>?>

    init(_ continuation: CheckedContinuation<Outcome, Never>) {
        self.continuation = Mutex(continuation)
    }

    func resume(_ outcome: Outcome) {
        continuation.withLock { continuation in
            defer { continuation = nil }
            return continuation
        }?.resume(returning: outcome)
    }

    /// Takes back the retain given to the C client and resumes; the C client calls each completion once.
    static func complete(_ data: UnsafeRawPointer?, _ outcome: Outcome) {
        guard let data else { return }
        Unmanaged<CompletionBox>.fromOpaque(data).takeRetainedValue().resume(outcome)
    }
}

let voidCompletion: void_completion_t = { rc, data in
    CompletionBox.complete(data, rc == ZOK.rawValue ? .success(.none) : .failure(rc))
}

let statCompletion: stat_completion_t = { rc, stat, data in
    CompletionBox.complete(data, rc == ZOK.rawValue ? .success(.stat(stat.map { Stat($0.pointee) })) : .failure(rc))
}

/// Like `statCompletion`, but an absent znode is an answer, not an error.
let existsCompletion: stat_completion_t = { rc, stat, data in
    switch rc {
    case ZOK.rawValue: CompletionBox.complete(data, .success(.stat(stat.map { Stat($0.pointee) })))
    case ZNONODE.rawValue: CompletionBox.complete(data, .success(.stat(nil)))
    default: CompletionBox.complete(data, .failure(rc))
    }
}

let dataCompletion: data_completion_t = { rc, value, length, stat, data in
    guard rc == ZOK.rawValue, let stat else {
        CompletionBox.complete(data, .failure(rc == ZOK.rawValue ? ZMARSHALLINGERROR.rawValue : rc))
        return
    }
    // Copied now: the C client frees `value` when the completion returns.
    var bytes: [UInt8] = []
    if let value, length > 0 {
        bytes = Array(UnsafeRawBufferPointer(start: value, count: Int(length)))
    }
    CompletionBox.complete(data, .success(.data(bytes, Stat(stat.pointee))))
}

let stringCompletion: string_completion_t = { rc, value, data in
    guard rc == ZOK.rawValue else {
        CompletionBox.complete(data, .failure(rc))
        return
    }
    CompletionBox.complete(data, .success(.string(value.map { String(cString: $0) } ?? "")))
}

let stringsCompletion: strings_completion_t = { rc, strings, data in
    guard rc == ZOK.rawValue else {
        CompletionBox.complete(data, .failure(rc))
        return
    }
    var names: [String] = []
    if let strings, let items = strings.pointee.data {
        names = (0..<Int(strings.pointee.count)).compactMap { index in items[index].map { String(cString: $0) } }
    }
    CompletionBox.complete(data, .success(.strings(names)))
}

// MARK: - C buffers

extension Array where Element == UInt8 {
    /// Calls `body` with a non-null pointer and the count: the C client serialises a null buffer as
    /// "no data" (-1) rather than as empty data.
    func withCBuffer<R>(_ body: (UnsafePointer<CChar>, Int32) -> R) -> R {
        let storage = isEmpty ? [0] : self
        return storage.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { body($0.baseAddress!, Int32(count)) }
        }
    }
}

/// Calls `body` with a C copy of `acl`, freed afterwards: the C calls serialise the request before returning.
func withACLVector<R>(_ acl: [ACL], _ body: (UnsafeMutablePointer<ACL_vector>) -> R) -> R {
    let entries = UnsafeMutablePointer<CZooKeeper.ACL>.allocate(capacity: Swift.max(acl.count, 1))
    for (index, entry) in acl.enumerated() {
        (entries + index).initialize(
            to: CZooKeeper.ACL(
                perms: entry.permissions.rawValue,
                id: Id(scheme: strdup(entry.scheme), id: strdup(entry.id))
            )
        )
    }
    defer {
        for index in acl.indices {
            free(entries[index].id.scheme)
            free(entries[index].id.id)
        }
        entries.deinitialize(count: acl.count)
        entries.deallocate()
    }
    var vector = ACL_vector(count: Int32(acl.count), data: entries)
    return body(&vector)
}
