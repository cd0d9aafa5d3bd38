// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "Backstage",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Backstage", targets: ["Backstage"]),
        .library(name: "BackstageSQLite", targets: ["BackstageSQLite"]),
        .library(name: "BackstagePostgres", targets: ["BackstagePostgres"]),
        .library(name: "BackstageTesting", targets: ["BackstageTesting"]),
    ],
    dependencies: [
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.3"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
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
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(name: "BackstageTesting", dependencies: ["Backstage"]),
        .testTarget(name: "BackstageTests", dependencies: ["Backstage", "BackstageTesting", "BackstageTestSupport"]),
        // The README's example, compiled and run as shown.
        .testTarget(
            name: "ReadmeTests",
            dependencies: ["Backstage", "BackstageSQLite", "BackstageTesting"]
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
                "Backstage", "BackstagePostgres", "BackstageTestSupport", .product(name: "Logging", package: "swift-log"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Tests/Workers/PostgresWorker"
        ),
        .testTarget(
            name: "BackstagePostgresTests",
            dependencies: [
                "Backstage", "BackstagePostgres", "BackstageTesting", "BackstageTestSupport",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
