// swift-tools-version: 6.1
import CompilerPluginSupport
import PackageDescription

let package = Package(
    name: "Backstage",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Backstage", targets: ["Backstage"]),
        .library(name: "BackstageSQLite", targets: ["BackstageSQLite"]),
        .library(name: "BackstagePostgres", targets: ["BackstagePostgres"]),
        .library(name: "BackstageTesting", targets: ["BackstageTesting"]),
        // The web console, a product of its own: only applications that mount it build Hummingbird.
        .library(name: "BackstageConsole", targets: ["BackstageConsole"]),
        // The operations CLI: the `backstage` tool, and its commands as a library an application
        // embeds with its own handlers and projections registered.
        .library(name: "BackstageCLI", targets: ["BackstageCLI"]),
        .executable(name: "backstage", targets: ["backstage"]),
        // `@EventFamily`, a macro: a product of its own, so that only applications that use it
        // build swift-syntax (a clean debug build of it takes minutes on 2 cores).
        .library(name: "BackstageMacros", targets: ["BackstageMacros"]),
    ],
    dependencies: [
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.3"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        // AsyncChannel for the console's server-sent events (Hummingbird depends on it already).
        .package(url: "https://github.com/apple/swift-async-algorithms", from: "1.1.4"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", exact: "2.28.1"),
        // `swift package generate-documentation`: the DocC catalogs under Sources/*/*.docc. A plugin:
        // nothing of it is built unless documentation is generated.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
        // The macros of BackstageMacros; 603 is the version for Swift 6.3.
        .package(url: "https://github.com/swiftlang/swift-syntax", "600.0.0"..<"604.0.0"),
    ],
    targets: [
        .target(
            name: "Backstage",
            dependencies: [
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        .target(
            name: "BackstageSQLite",
            dependencies: [
                "Backstage", .product(name: "GRDB", package: "GRDB.swift"),
                // SQLite's C API for binding the append's values without GRDB's argument arrays.
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
                // Store metrics: append duration, events per append, appends per transaction.
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "BackstagePostgres",
            dependencies: [
                "Backstage", .product(name: "PostgresNIO", package: "postgres-nio"),
                // For ConnectionPoolError: a cancelled wait for a connection becomes CancellationError.
                .product(name: "_ConnectionPoolModule", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(name: "BackstageTesting", dependencies: ["Backstage"]),
        .target(
            name: "BackstageConsole",
            dependencies: [
                "Backstage", .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "AsyncAlgorithms", package: "swift-async-algorithms"),
            ]
        ),
        .testTarget(
            name: "BackstageConsoleTests",
            dependencies: [
                "Backstage", "BackstageConsole", "BackstageTesting",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
            ]
        ),
        .target(
            name: "BackstageCLI",
            dependencies: [
                "Backstage", "BackstageSQLite", "BackstagePostgres",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(name: "backstage", dependencies: ["BackstageCLI"]),
        .testTarget(
            name: "BackstageCLITests",
            dependencies: ["Backstage", "BackstageCLI", "BackstageSQLite", "BackstageTesting"]
        ),
        .macro(
            name: "BackstageMacrosPlugin",
            dependencies: [
                .product(name: "SwiftSyntax", package: "swift-syntax"),
                .product(name: "SwiftSyntaxBuilder", package: "swift-syntax"),
                .product(name: "SwiftSyntaxMacros", package: "swift-syntax"),
                .product(name: "SwiftDiagnostics", package: "swift-syntax"),
                .product(name: "SwiftCompilerPlugin", package: "swift-syntax"),
            ]
        ),
        .target(name: "BackstageMacros", dependencies: ["Backstage", "BackstageMacrosPlugin"]),
        .testTarget(
            name: "BackstageMacrosTests",
            dependencies: [
                "Backstage", "BackstageMacros", "BackstageMacrosPlugin",
                .product(name: "SwiftSyntaxMacroExpansion", package: "swift-syntax"),
                .product(name: "SwiftSyntaxMacrosGenericTestSupport", package: "swift-syntax"),
            ]
        ),
        .testTarget(
            name: "BackstageTests",
            dependencies: [
                "Backstage", "BackstageTesting", "BackstageTestSupport",
                // In-memory tracer and metrics backends for the telemetry tests.
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ]
        ),
        // The README's example and the code of the DocC articles, compiled and run as shown.
        .testTarget(
            name: "ReadmeTests",
            dependencies: [
                "Backstage", "BackstageSQLite", "BackstagePostgres", "BackstageTesting", "BackstageConsole",
                "BackstageCLI", "BackstageMacros", .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                // The running-stores and telemetry articles: an HTTP server in a ServiceGroup, and
                // the in-memory tracing and metrics backends they show.
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ]
        ),
        // Test doubles and fixture domains shared by the test targets; not part of any product.
        .target(
            name: "BackstageTestSupport",
            dependencies: ["Backstage", "BackstageSQLite", .product(name: "GRDB", package: "GRDB.swift")],
            path: "Tests/Support"
        ),
        .testTarget(
            name: "BackstageSQLiteTests",
            dependencies: [
                "Backstage", "BackstageSQLite", "BackstageTesting", "BackstageTestSupport",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // A child process for the SQLite crash test; not part of any product.
        .executableTarget(
            name: "backstage-append-worker",
            dependencies: ["Backstage", "BackstageSQLite", "BackstageTestSupport"],
            path: "Tests/Workers/AppendWorker"
        ),
        // A child process for the projection crash test; not part of any product.
        .executableTarget(
            name: "backstage-projection-worker",
            dependencies: [
                "Backstage", "BackstageSQLite", "BackstageTestSupport", .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Tests/Workers/ProjectionWorker"
        ),
        // A child process for the SQLite multi-process pipeline tests; not part of any product.
        .executableTarget(
            name: "backstage-sqlite-worker",
            dependencies: [
                "Backstage", "BackstageSQLite", "BackstageTestSupport", .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Tests/Workers/SQLiteWorker"
        ),
        // A child process for the PostgreSQL multi-process tests; not part of any product.
        .executableTarget(
            name: "backstage-postgres-worker",
            dependencies: [
                "Backstage", "BackstagePostgres", "BackstageTestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Tests/Workers/PostgresWorker"
        ),
        .testTarget(
            name: "BackstagePostgresTests",
            dependencies: [
                "Backstage", "BackstagePostgres", "BackstageTesting", "BackstageTestSupport", "BackstageCLI",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
