// Package alerts owns the alerter binary: it consumes the emotion events of
// the events topic with a Kafka consumer group, keeps a short state per
// conversation (in Redis, keyed by tenant and conversation) and publishes an
// alert to the alerts topic, and stores it in ClickHouse, when a
// conversation turns: an escalation rule of the rules file opens an
// episode. Rules advance in the conversation's message order (the chat
// message's source offset; a reorder window puts events published out of
// order back in order), count live events only, never count a message
// twice, and alert once per episode (hysteresis). A state is saved with the
// alerts it opened before they are published, and alert ids are
// deterministic, so a redelivery or a restart publishes the same alert, never
// a second one.
package alerts
