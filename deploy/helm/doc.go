// Package helm holds the emoflow Helm chart (emoflow/) and its test, which
// renders the chart with helm's engine and decodes every object strictly
// into the Kubernetes API types. It is a module of its own so that helm and
// the Kubernetes libraries stay out of the product's go.mod.
package helm
