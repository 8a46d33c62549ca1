import ArgumentParser
import Herald

#if canImport(Glibc)
    import Glibc
#endif

/// One option that an environment variable can also give, declared once.
///
/// The flag's help text (with its variable and default), the lookup (the flag wins, then the variable, then the
/// default) and the check of a value all come from this one declaration, so `--help` and the behaviour cannot
/// drift apart. Containers and Kubernetes configure Herald through the variables; people use the flags.
///
/// apple/swift-configuration was evaluated for this. Its environment provider would replace one dictionary
/// lookup, but its getters with a default return the default when a value does not parse, so a typo such as
/// `HERALD_LOG_BYTES=64M` would silently run with 64 MiB; here it stops the process with a message that names
/// the variable. ArgumentParser still owns the flags and `--help`, so the library would only have added a
/// dependency (and Yams, which it declares) for that lookup.
struct Setting<Value: Sendable>: Sendable {
    /// The environment variable, such as `HERALD_REQUEST_PORT`.
    let variable: String
    /// The flag, such as `--request-port`, for messages.
    let flag: String
    /// The value when neither the flag nor the variable gives one; `nil` for none.
    let fallback: Value?
    /// The `--help` text: what the setting does, its variable and its default.
    let help: ArgumentHelp
    /// Turns the variable's text into a value; `nil` when it is not one.
    private let parse: @Sendable (String) -> Value?
    /// What a value must be, as `--help` and errors say it: "a whole number in 0...65535".
    private let expected: String
    /// Whether a parsed value is acceptable.
    private let accepts: @Sendable (Value) -> Bool

    /// Declares a setting.
    /// - Parameters:
    ///   - variable: the environment variable; the flag is derived from it (`HERALD_REQUEST_PORT` is
    ///     `--request-port`) unless `flag` names it.
    ///   - summary: what the setting does, one or two sentences.
    ///   - fallback: the default, or `nil` for none.
    ///   - fallbackText: how the default reads in `--help`, when its plain value would not say it well.
    ///   - expected: what a value must be, for errors.
    ///   - parse: turns the variable's text into a value.
    ///   - accepts: whether a value is acceptable.
    init(
        _ variable: String, _ summary: String, flag: String? = nil, default fallback: Value?,
        defaultText fallbackText: String? = nil, expected: String,
        parse: @escaping @Sendable (String) -> Value?, accepts: @escaping @Sendable (Value) -> Bool = { _ in true }
    ) {
        self.variable = variable
        self.flag = flag ?? "--" + variable.dropFirst("HERALD_".count).lowercased().replacing("_", with: "-")
        self.fallback = fallback
        self.parse = parse
        self.expected = expected
        self.accepts = accepts
        let shown = fallbackText ?? fallback.map { "\($0)" } ?? "none"
        help = ArgumentHelp("\(summary) (env: \(variable); default: \(shown))")
    }

    /// The setting's value: the flag's if given, else the variable's, else the default; `nil` when none is.
    /// - Throws: `ValidationError` naming the flag or the variable when the value is not acceptable.
    func optionalValue(_ flagValue: Value?) throws -> Value? {
        if let flagValue {
            guard accepts(flagValue) else { throw ValidationError("\(flag) must be \(expected), got \(flagValue)") }
            return flagValue
        }
        guard let text = Self.environment(variable) else { return fallback }
        guard let value = parse(text), accepts(value) else {
            throw ValidationError("\(variable) must be \(expected), got '\(text)'")
        }
        return value
    }

    /// The setting's value when the flag is text that this setting parses, as for modes, choices and the HTTP port.
    func value(parsing flagText: String?) throws -> Value {
        guard let flagText else { return try value(nil) }
        guard let value = parse(flagText), accepts(value) else {
            throw ValidationError("\(flag) must be \(expected), got '\(flagText)'")
        }
        return value
    }

    /// The setting's value, for a setting with a default.
    func value(_ flagValue: Value?) throws -> Value {
        guard let value = try optionalValue(flagValue) else {
            throw ValidationError("\(flag) is required (or \(variable))")
        }
        return value
    }

    /// An environment variable's value; an empty one counts as unset, as Compose writes `VAR=` for "no value".
    static func environment(_ name: String) -> String? {
        guard let pointer = getenv(name) else { return nil }
        let text = String(cString: pointer)
        return text.isEmpty ? nil : text
    }
}

// MARK: - Kinds of settings

extension Setting where Value == String {
    /// Text, taken as given.
    static func text(
        _ variable: String, _ summary: String, flag: String? = nil, default fallback: String?,
        defaultText: String? = nil
    ) -> Self {
        Self(
            variable, summary, flag: flag, default: fallback, defaultText: defaultText, expected: "some text",
            parse: { $0 })
    }
}

extension Setting where Value == Int {
    /// A whole number in `range`.
    static func integer(
        _ variable: String, _ summary: String, flag: String? = nil, default fallback: Int?, defaultText: String? = nil,
        in range: ClosedRange<Int>
    ) -> Self {
        Self(
            variable, summary, flag: flag, default: fallback, defaultText: defaultText,
            expected: "a whole number in \(range.lowerBound)...\(range.upperBound)", parse: { Int($0) },
            accepts: { range.contains($0) })
    }

    /// A TCP port; 0 picks a free one.
    static func port(_ variable: String, _ summary: String, flag: String? = nil, default fallback: Int) -> Self {
        integer(variable, summary, flag: flag, default: fallback, in: 0...65535)
    }
}

extension Setting where Value == Bool {
    /// A switch: `1`, `true` or `yes` turn it on, `0`, `false` or `no` off.
    static func flag(_ variable: String, _ summary: String, flag: String? = nil) -> Self {
        Self(
            variable, summary, flag: flag, default: false, defaultText: "off", expected: "1, true, yes, 0, false or no",
            parse: { text in
                switch text.lowercased() {
                case "1", "true", "yes": true
                case "0", "false", "no": false
                default: nil
                }
            })
    }

    /// A `@Flag`'s value, or the variable's when the flag is not given.
    func value(_ flagGiven: Bool) throws -> Bool {
        flagGiven ? true : try value(nil)
    }
}

extension Setting where Value == Duration {
    /// A duration given in seconds, in `range`.
    static func duration(
        _ variable: String, _ summary: String, flag: String? = nil, default fallback: Duration,
        in range: ClosedRange<Double>
    ) -> Self {
        Self(
            variable, summary, flag: flag, default: fallback, defaultText: fallback.seconds.formatted,
            expected: "a number of seconds in \(range.lowerBound.formatted)...\(range.upperBound.formatted)",
            parse: { Double($0).flatMap(durationOf(seconds:)) }, accepts: { range.contains($0.seconds) })
    }

    /// The value of a `Double` flag in seconds, or the variable's, or the default.
    func value(seconds flagValue: Double?) throws -> Duration {
        guard let flagValue else { return try value(nil) }
        guard let duration = Self.durationOf(seconds: flagValue) else {
            throw ValidationError("\(flag) must be \(expected), got \(flagValue)")
        }
        return try value(duration)
    }

    /// Seconds as a duration; `nil` for NaN, the infinities and magnitudes that `Int` milliseconds cannot hold,
    /// which would otherwise stop the process with a trap instead of a message.
    private static func durationOf(seconds: Double) -> Duration? {
        guard seconds.isFinite, seconds.magnitude <= 1e9 else { return nil }
        return .milliseconds(Int((seconds * 1000).rounded()))
    }
}

extension Double {
    /// `2` rather than `2.0`, for messages and `--help`.
    fileprivate var formatted: String {
        rounded() == self && abs(self) < 1e15 ? "\(Int(self))" : "\(self)"
    }
}

extension Setting {
    /// A value of `Value` from its raw text, such as a mode or a log level.
    static func choice(
        _ variable: String, _ summary: String, flag: String? = nil, default fallback: Value?,
        defaultText: String? = nil, choices: String
    ) -> Self where Value: RawRepresentable, Value.RawValue == String {
        Self(
            variable, summary, flag: flag, default: fallback, defaultText: defaultText ?? fallback?.rawValue,
            expected: "one of \(choices)", parse: { Value(rawValue: $0.lowercased()) })
    }
}
