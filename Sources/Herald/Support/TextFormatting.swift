/// Number and text formatting for logs, reports and options, without Foundation (whose `String(format:)` and
/// `trimmingCharacters(in:)` would bring its ICU data into every process).
extension Double {
    /// The number rounded to `decimals` places, as `%.Nf` prints it: `1.5.decimal(2)` is `"1.50"`.
    public func decimal(_ decimals: Int) -> String {
        guard isFinite else { return isNaN ? "nan" : (self < 0 ? "-inf" : "inf") }
        let places = max(0, min(decimals, 9))
        var scale: UInt64 = 1
        for _ in 0..<places { scale *= 10 }
        let scaled = (magnitude * Double(scale)).rounded()
        guard scaled < 9.2e18 else { return "\(self)" }
        let units = UInt64(scaled)
        let sign = self < 0 && units > 0 ? "-" : ""
        guard places > 0 else { return sign + "\(units)" }
        let fraction = String(units % scale)
        return sign + "\(units / scale)." + String(repeating: "0", count: places - fraction.count) + fraction
    }
}

extension StringProtocol {
    /// The text without leading and trailing spaces, tabs and line breaks.
    public func trimmingWhitespace() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else {
            return ""
        }
        return String(self[first...last])
    }
}
