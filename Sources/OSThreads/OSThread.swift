#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Dedicated operating-system threads, for what must not run on Swift's cooperative pool: a ZeroMQ socket's
/// owner loop, a blocking C call. Foundation's `Thread` does this too, but Foundation (with its ICU data) costs a
/// Herald process about 8 MB of resident memory; these few lines of pthreads do not.
public enum OSThread {
    /// Starts a detached thread that runs `body` and ends with it.
    /// - Parameters:
    ///   - name: a name for debuggers and `top -H`; the kernel keeps its first 15 bytes.
    ///   - body: the work.
    /// - Throws: ``OSThreadError`` when the system refuses another thread (`EAGAIN`: a thread or memory limit).
    public static func start(name: String, _ body: @escaping @Sendable () -> Void) throws(OSThreadError) {
        let work = Unmanaged.passRetained(Work(name: name, body: body)).toOpaque()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        var thread = pthread_t()
        let result = pthread_create(&thread, &attributes, threadEntry, work)
        guard result == 0 else {
            Unmanaged<Work>.fromOpaque(work).release()
            throw OSThreadError(name: name, code: result)
        }
    }

    /// Names the calling thread through `/proc/thread-self/comm`: `pthread_setname_np` is a GNU extension that
    /// Swift's Glibc module does not export. A name is a convenience, so a failure is ignored.
    fileprivate static func nameCurrentThread(_ name: String) {
        let descriptor = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return }
        defer { close(descriptor) }
        let bytes = Array(name.utf8.prefix(15))
        _ = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
    }

    /// What the new thread runs, carried across `pthread_create`'s untyped pointer.
    fileprivate final class Work: Sendable {
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) {
            self.name = name
            self.body = body
        }
    }
}

/// Where every thread starts: takes its work back from the untyped pointer, names the thread, runs the work.
private func threadEntry(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    guard let context else { return nil }
    let work = Unmanaged<OSThread.Work>.fromOpaque(context).takeRetainedValue()
    OSThread.nameCurrentThread(work.name)
    work.body()
    return nil
}

/// The system refused to start a thread.
public struct OSThreadError: Error, CustomStringConvertible {
    /// The thread's name.
    public var name: String
    /// The error number `pthread_create` returned.
    public var code: Int32

    public var description: String {
        "cannot start thread \(name): \(String(cString: strerror(code))) (errno \(code)); "
            + "the process or the system is at its thread or memory limit"
    }
}
