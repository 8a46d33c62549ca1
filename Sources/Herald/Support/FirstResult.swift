/// Runs `operation` for at most `limit` (no limit when `nil`) and returns its result, or `nil` when the time
/// ran out first; the loser is cancelled.
func firstResult<T: Sendable>(within limit: Duration?, _ operation: @escaping @Sendable () async -> T?) async -> T? {
    await withTaskGroup(of: T?.self) { group in
        group.addTask { await operation() }
        if let limit {
            group.addTask {
                try? await Task.sleep(for: limit)
                return nil
            }
        }
        let first = await group.next() ?? nil
        group.cancelAll()
        return first
    }
}
