// swift-tools-version: 6.1
import PackageDescription

// The box-office example: a small event-sourced domain (shows, tickets, sales, refunds), a demo
// that dispatches thousands of commands concurrently, and an HTTP API. It lives in its own
// package so that users of Backstage never resolve the example's dependencies.
let package = Package(
    name: "BoxOffice",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "box-office", targets: ["box-office"])
    ],
    dependencies: [
        .package(name: "Backstage", path: "../.."),
        .package(url: "https://github.com/hummingbird-project/hummingbird", exact: "2.28.1"),
        .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.0.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", exact: "2.4.1"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
    ],
    targets: [
        .target(
            name: "BoxOffice",
            dependencies: [
                .product(name: "Backstage", package: "Backstage"),
                // @EventFamily for the event enums (builds swift-syntax).
                .product(name: "BackstageMacros", package: "Backstage"),
                .product(name: "BackstageSQLite", package: "Backstage"),
                .product(name: "BackstagePostgres", package: "Backstage"),
                .product(name: "BackstageConsole", package: "Backstage"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "box-office",
            dependencies: [
                "BoxOffice",
                .product(name: "BackstageCLI", package: "Backstage"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "BoxOfficeTests",
            dependencies: [
                "BoxOffice",
                .product(name: "BackstageTesting", package: "Backstage"),
                .product(name: "BackstagePostgres", package: "Backstage"),
                .product(name: "BackstageSQLite", package: "Backstage"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
