internal import CZooKeeper
import FoundationEssentials
import OSThreads
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// One ZooKeeper session: one handle of the multi-threaded C client, connected to an ensemble.
///
/// The client connects in the background and moves between ``SessionState/connecting`` and
/// ``SessionState/connected`` by itself as servers come and go; the session, its ephemeral znodes and its
/// watches survive as long as some server is reached within the session timeout.
///
/// Once the session is ``SessionState/expired`` (or authentication failed) the handle is dead for good:
/// every operation fails with ``ZooKeeperError/Code/sessionExpired``. **The clean way to start a new session
/// is to ``close()`` this one and create a new `ZooKeeperSession` with the same configuration**; upper
/// layers (leader election) then re-create their ephemeral znodes and watches on it.
///
/// All operations are asynchronous and may be called from any task. They cannot be cancelled once sent;
/// while no server is reachable they fail with ``ZooKeeperError/Code/connectionLoss`` (at the latest after
/// the session timeout). After ``close()`` every operation throws ``ZooKeeperError/Code/sessionClosed``.
public final class ZooKeeperSession: Sendable {
    /// The configuration this session was created with.
    public let configuration: ZooKeeperConfiguration

    private let core: SessionCore
    private let handle: Handle
    private let logger: Logger

    /// Creates a session and starts connecting in the background.
    ///
    /// Use ``waitUntilConnected(timeout:)`` or ``states()`` to learn when it is usable; operations issued
    /// before that wait for the connection (or fail with connection loss).
    ///
    /// - Parameters:
    ///   - configuration: Where to connect and the session timeout.
    ///   - logger: Receives this session's state changes; the first session's logger also receives the
    ///     C client's own messages (see ``routeClientLibraryLog(to:)``).
    /// - Throws: ``ZooKeeperError/Code/badArguments`` for an invalid connection string, or
    ///   ``ZooKeeperError/Code/systemError`` if the C client cannot create a handle.
    public init(configuration: ZooKeeperConfiguration, logger: Logger) throws(ZooKeeperError) {
        try configuration.validate()
        ClientLog.install(logger)
        var logger = logger
        logger[metadataKey: "zookeeper.connection"] = "\(configuration.connectionString)"
        let core = SessionCore(connectionString: configuration.connectionString, logger: logger)
        // The handle's context: one retain owned by the C handle, given back in `finishClose` after
        // `zookeeper_close` has returned, when no callback can run any more.
        let context = Unmanaged.passRetained(core).toOpaque()
        errno = 0
        let raw = zookeeper_init2(
            configuration.connectionString,
            sessionWatcher,
            configuration.sessionTimeoutMilliseconds,
            nil,
            context,
            ZOO_NO_LOG_CLIENTENV,
            clientLogCallback
        )
        guard let raw else {
            let reason = errno
            Unmanaged<SessionCore>.fromOpaque(context).release()
            let code: ZooKeeperError.Code = reason == EINVAL || reason == ENOENT ? .badArguments : .systemError
            throw ZooKeeperError(
                code: code,
                connectionString: configuration.connectionString,
                libraryMessage: "cannot create a ZooKeeper handle for '\(configuration.connectionString)': "
                    + String(cString: strerror(reason))
            )
        }
        if let authentication = configuration.authentication {
            // Queued by the client and sent again on every reconnection of this session; a rejected identity
            // moves the session to `authenticationFailed`.
            let code = authentication.credentials.withCBuffer { bytes, count in
                zoo_add_auth(raw, authentication.scheme, bytes, count, nil, nil)
            }
            guard code == ZOK.rawValue else {
                zookeeper_close(raw)
                Unmanaged<SessionCore>.fromOpaque(context).release()
                throw ZooKeeperError(
                    code: ZooKeeperError.Code(returnCode: code), connectionString: configuration.connectionString,
                    libraryMessage: "cannot add the ZooKeeper identity \(authentication)")
            }
        }
        self.configuration = configuration
        self.core = core
        self.handle = Handle(raw: raw)
        self.logger = logger
        logger.debug("ZooKeeper session created", metadata: ["timeout": "\(configuration.sessionTimeout)"])
    }

    deinit {
        // Cannot await here: close on a thread of its own, as `close()` does.
        if core.beginClose() {
            let core = self.core
            let handle = self.handle
            do {
                try OSThread.start(name: "zk-close") { Self.closeHandle(handle, core: core) }
            } catch {
                Self.closeHandle(handle, core: core)
            }
        }
    }

    /// The current state.
    public var state: SessionState { core.currentState }

    /// The ACL ``create(_:data:mode:acl:)`` gives znodes unless told otherwise: with an identity configured, only
    /// that identity may change them and anyone may read them; without one, anyone may do anything.
    public var defaultACL: [ACL] {
        configuration.authentication == nil ? ACL.openUnsafe : ACL.creatorAll + ACL.readUnsafe
    }

    /// The session id the server assigned, once connected; compare it with ``Stat/ephemeralOwner``.
    public var sessionID: Int64? {
        guard (try? core.beginCall()) != nil else { return nil }
        defer { core.endCall() }
        guard state.isConnected, let id = zoo_client_id(handle.raw) else { return nil }
        return id.pointee.client_id == 0 ? nil : id.pointee.client_id
    }

    /// A stream of states: first the current one, then every change.
    ///
    /// Each call returns an independent stream, so any number of consumers can watch. The stream ends
    /// after a terminal state (``SessionState/isTerminal``) has been yielded.
    ///
    /// - Returns: The stream of states.
    public func states() -> AsyncStream<SessionState> {
        core.makeStateStream()
    }

    /// Waits until the session is connected.
    ///
    /// - Parameter timeout: How long to wait at most.
    /// - Throws: ``ZooKeeperError/Code/timedOut`` after `timeout`; ``ZooKeeperError/Code/sessionExpired``,
    ///   ``ZooKeeperError/Code/authFailed`` or ``ZooKeeperError/Code/sessionClosed`` if the session ends;
    ///   ``ZooKeeperError/Code/cancelled`` if the task is cancelled.
    public func waitUntilConnected(timeout: Duration) async throws(ZooKeeperError) {
        let stream = states()
        let connectionString = configuration.connectionString
        let outcome = await withTaskGroup(of: ZooKeeperError.Code??.self) { group -> ZooKeeperError.Code? in
            group.addTask {
                for await state in stream {
                    switch state {
                    case .connected, .connectedReadOnly: return .some(nil)
                    case .connecting: continue
                    case .expired: return .sessionExpired
                    case .authenticationFailed: return .authFailed
                    case .closed: return .sessionClosed
                    }
                }
                return nil  // Cancelled.
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return Task.isCancelled ? nil : .timedOut
            }
            defer { group.cancelAll() }
            while let result = await group.next() {
                if let result { return result }
            }
            return .cancelled
        }
        if let outcome {
            throw ZooKeeperError(
                code: outcome,
                connectionString: connectionString,
                libraryMessage: outcome == .timedOut ? "not connected within \(timeout)" : nil
            )
        }
    }

    /// Creates a znode.
    ///
    /// - Parameters:
    ///   - path: The absolute path; for sequential modes the prefix to which the server appends a counter.
    ///   - data: The znode's data (at most about 1 MB).
    ///   - mode: Persistent or ephemeral, sequential or not.
    ///   - acl: Who may do what with the znode; ``defaultACL`` when `nil`.
    /// - Returns: The path actually created, which for sequential modes includes the counter.
    /// - Throws: ``ZooKeeperError`` such as ``ZooKeeperError/Code/nodeExists`` or ``ZooKeeperError/Code/noNode``
    ///   (missing parent).
    @discardableResult
    public func create(
        _ path: String,
        data: [UInt8] = [],
        mode: CreateMode = .persistent,
        acl: [ACL]? = nil
    ) async throws(ZooKeeperError) -> String {
        let acl = acl ?? defaultACL
        let reply = try await perform(path) { zh, box in
            withACLVector(acl) { aclVector in
                data.withCBuffer { bytes, count in
                    zoo_acreate(zh, path, bytes, count, aclVector, mode.flags, stringCompletion, box)
                }
            }
        }
        guard case .string(let created) = reply else { preconditionFailure("create: unexpected \(reply)") }
        return created
    }

    /// Reads a znode's data and metadata.
    ///
    /// - Parameter path: The absolute path.
    /// - Returns: The data and the metadata.
    /// - Throws: ``ZooKeeperError`` such as ``ZooKeeperError/Code/noNode``.
    public func get(_ path: String) async throws(ZooKeeperError) -> (data: [UInt8], stat: Stat) {
        let reply = try await perform(path) { zh, box in
            zoo_awget(zh, path, nil, nil, dataCompletion, box)
        }
        guard case .data(let data, let stat) = reply else { preconditionFailure("get: unexpected \(reply)") }
        return (data, stat)
    }

    /// Replaces a znode's data.
    ///
    /// - Parameters:
    ///   - path: The absolute path.
    ///   - data: The new data.
    ///   - version: The version the znode must have, or -1 for any.
    /// - Returns: The znode's new metadata.
    /// - Throws: ``ZooKeeperError`` such as ``ZooKeeperError/Code/badVersion`` or ``ZooKeeperError/Code/noNode``.
    @discardableResult
    public func set(_ path: String, data: [UInt8], version: Int32 = -1) async throws(ZooKeeperError) -> Stat {
        let reply = try await perform(path) { zh, box in
            data.withCBuffer { bytes, count in
                zoo_aset(zh, path, bytes, count, version, statCompletion, box)
            }
        }
        guard case .stat(let stat?) = reply else { preconditionFailure("set: unexpected \(reply)") }
        return stat
    }

    /// Replaces a znode's ACL.
    ///
    /// - Parameters:
    ///   - path: The absolute path.
    ///   - acl: The new ACL.
    ///   - version: The ACL version the znode must have, or -1 for any.
    /// - Throws: ``ZooKeeperError`` such as ``ZooKeeperError/Code/noAuth`` (this identity may not change it) or
    ///   ``ZooKeeperError/Code/noNode``.
    public func setACL(_ path: String, _ acl: [ACL], version: Int32 = -1) async throws(ZooKeeperError) {
        _ = try await perform(path) { zh, box in
            withACLVector(acl) { zoo_aset_acl(zh, path, version, $0, voidCompletion, box) }
        }
    }

    /// Deletes a znode.
    ///
    /// - Parameters:
    ///   - path: The absolute path.
    ///   - version: The version the znode must have, or -1 for any.
    /// - Throws: ``ZooKeeperError`` such as ``ZooKeeperError/Code/notEmpty``, ``ZooKeeperError/Code/badVersion``
    ///   or ``ZooKeeperError/Code/noNode``.
    public func delete(_ path: String, version: Int32 = -1) async throws(ZooKeeperError) {
        _ = try await perform(path) { zh, box in
            zoo_adelete(zh, path, version, voidCompletion, box)
        }
    }

    /// Reads a znode's metadata, if it exists.
    ///
    /// - Parameter path: The absolute path.
    /// - Returns: The metadata, or `nil` if the znode does not exist.
    /// - Throws: ``ZooKeeperError``.
    public func exists(_ path: String) async throws(ZooKeeperError) -> Stat? {
        let reply = try await perform(path) { zh, box in
            zoo_awexists(zh, path, nil, nil, existsCompletion, box)
        }
        guard case .stat(let stat) = reply else { preconditionFailure("exists: unexpected \(reply)") }
        return stat
    }

    /// Lists the names (not paths) of a znode's children, in no particular order.
    ///
    /// - Parameter path: The absolute path.
    /// - Returns: The children's names.
    /// - Throws: ``ZooKeeperError`` such as ``ZooKeeperError/Code/noNode``.
    public func children(_ path: String) async throws(ZooKeeperError) -> [String] {
        let reply = try await perform(path) { zh, box in
            zoo_awget_children(zh, path, nil, nil, stringsCompletion, box)
        }
        guard case .strings(let names) = reply else { preconditionFailure("children: unexpected \(reply)") }
        return names
    }

    /// Reads a znode and leaves a watch that fires on its next data change or deletion.
    ///
    /// - Parameter path: The absolute path.
    /// - Returns: The data, the metadata and the watch.
    /// - Throws: ``ZooKeeperError`` such as ``ZooKeeperError/Code/noNode`` (no watch is left then; use
    ///   ``existsWatching(_:)`` to wait for a znode's creation).
    public func getWatching(_ path: String) async throws(ZooKeeperError) -> (data: [UInt8], stat: Stat, watch: Watch) {
        let (id, watch) = core.registerWatch(path: path)
        do {
            let reply = try await perform(path) { zh, box in
                zoo_awget(zh, path, nodeWatcher, UnsafeMutableRawPointer(bitPattern: id), dataCompletion, box)
            }
            guard case .data(let data, let stat) = reply else { preconditionFailure("get: unexpected \(reply)") }
            return (data, stat, watch)
        } catch {
            core.dropWatch(id)
            throw error
        }
    }

    /// Reads a znode's metadata and leaves a watch that fires when it is created, changed or deleted.
    ///
    /// - Parameter path: The absolute path.
    /// - Returns: The metadata (`nil` if the znode does not exist) and the watch.
    /// - Throws: ``ZooKeeperError``.
    public func existsWatching(_ path: String) async throws(ZooKeeperError) -> (stat: Stat?, watch: Watch) {
        let (id, watch) = core.registerWatch(path: path)
        do {
            let reply = try await perform(path) { zh, box in
                zoo_awexists(zh, path, nodeWatcher, UnsafeMutableRawPointer(bitPattern: id), existsCompletion, box)
            }
            guard case .stat(let stat) = reply else { preconditionFailure("exists: unexpected \(reply)") }
            return (stat, watch)
        } catch {
            core.dropWatch(id)
            throw error
        }
    }

    /// Lists a znode's children and leaves a watch that fires when a child is created or deleted, or the
    /// znode itself is deleted.
    ///
    /// - Parameter path: The absolute path.
    /// - Returns: The children's names and the watch.
    /// - Throws: ``ZooKeeperError`` such as ``ZooKeeperError/Code/noNode``.
    public func childrenWatching(_ path: String) async throws(ZooKeeperError) -> (children: [String], watch: Watch) {
        let (id, watch) = core.registerWatch(path: path)
        do {
            let reply = try await perform(path) { zh, box in
                zoo_awget_children(
                    zh, path, nodeWatcher, UnsafeMutableRawPointer(bitPattern: id), stringsCompletion, box)
            }
            guard case .strings(let names) = reply else { preconditionFailure("children: unexpected \(reply)") }
            return (names, watch)
        } catch {
            core.dropWatch(id)
            throw error
        }
    }

    /// Closes the session: the server deletes its ephemeral znodes at once, outstanding operations fail
    /// with ``ZooKeeperError/Code/closing``, outstanding watches fire with ``WatchEvent/Kind/sessionClosed``,
    /// state streams yield ``SessionState/closed`` and end.
    ///
    /// Idempotent; a second call waits until the first has finished. `zookeeper_close` blocks (it flushes
    /// and waits for the server's answer), so it runs on a thread of its own, never on the C client's
    /// completion thread or the concurrency pool.
    public func close() async {
        guard core.beginClose() else {
            await core.waitUntilClosed()
            return
        }
        let core = self.core
        let handle = self.handle
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            do {
                try OSThread.start(name: "zk-close") {
                    Self.closeHandle(handle, core: core)
                    continuation.resume()
                }
            } catch {
                // No thread to spare: block this one, as the C client's close must run somewhere.
                Self.closeHandle(handle, core: core)
                continuation.resume()
            }
        }
    }
}

// MARK: - Handle

extension ZooKeeperSession {
    /// The C handle.
    ///
    /// `@unchecked Sendable` is safe: the `zhandle_t` of the multi-threaded client may be used from any
    /// thread (its calls lock internally; the client itself uses it from its IO and completion threads),
    /// and `SessionCore` guarantees it is used only between `zookeeper_init2` and `zookeeper_close`:
    /// calls are counted in and out, and the close waits for the count to drop to zero.
    struct Handle: @unchecked Sendable {
        let raw: OpaquePointer
    }

    /// Closes the handle; runs on a dedicated thread.
    static func closeHandle(_ handle: Handle, core: SessionCore) {
        core.waitForCallsToDrain()
        let rc = zookeeper_close(handle.raw)
        core.finishClose(returnCode: rc)
        // No callback can run any more: give back the handle's retain taken in `init`.
        Unmanaged.passUnretained(core).release()
    }

    /// Starts one asynchronous C call and waits for its completion.
    ///
    /// `start` gets the handle and the completion's `data` pointer (a retained `CompletionBox`) and
    /// returns the C call's return code.
    private func perform(
        _ path: String,
        _ start: (OpaquePointer, UnsafeMutableRawPointer) -> Int32
    ) async throws(ZooKeeperError) -> Reply {
        do {
            try core.beginCall()
        } catch {
            throw ZooKeeperError(code: error.code, path: path, connectionString: configuration.connectionString)
        }
        let raw = handle.raw
        var tracked: UInt64?
        defer { if let tracked { core.untrack(tracked) } }
        let outcome = await withCheckedContinuation { (continuation: CheckedContinuation<Outcome, Never>) in
            let box = CompletionBox(continuation)
            guard let id = core.track(box) else {
                core.endCall()
                box.resume(.failure(SessionCore.returnCode(endedBy: core.currentState)))
                return
            }
            tracked = id
            let data = Unmanaged.passRetained(box).toOpaque()
            let rc = start(raw, data)
            core.endCall()
            guard rc == ZOK.rawValue else {
                // The completion will not be called, so its retain is ours to give back; except after a
                // marshalling error, where the C client may already have queued the completion (it registers
                // the completion before queueing the buffer): leaking one small box is then the safe choice.
                if rc != ZMARSHALLINGERROR.rawValue {
                    Unmanaged<CompletionBox>.fromOpaque(data).release()
                }
                box.resume(.failure(rc))
                return
            }
        }
        switch outcome {
        case .success(let reply):
            return reply
        case .failure(let rc):
            var code = ZooKeeperError.Code(returnCode: rc)
            if code == .invalidState && core.currentState == .expired { code = .sessionExpired }
            if code == .closing { code = .sessionClosed }
            throw ZooKeeperError(code: code, path: path, connectionString: configuration.connectionString)
        }
    }
}
