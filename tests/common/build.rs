//! Graphs in a few lines, for tests that state one claim each:
//!
//! ```ignore
//! let model = Graph::new(13)
//!     .input("x", &[1, 2, 4, 4])
//!     .init("w", &[2, 2, 1, 1], &[1.0, 0.5, -0.5, 2.0])
//!     .bn_params("bn", 2)
//!     .node("Conv", &["x", "w"], &["y"])
//!     .node("BatchNormalization", &["y", "bn.scale", "bn.bias", "bn.mean", "bn.var"], &["z"])
//!     .output("z")
//!     .model();
//! ```

use bnfold::proto::attribute_proto::AttributeType;
use bnfold::proto::tensor_proto::DataType;
use bnfold::proto::tensor_shape_proto::{dimension, Dimension};
use bnfold::proto::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// A graph being built; every tensor float32 unless said otherwise.
pub struct Graph {
    opset: i64,
    graph: GraphProto,
}

impl Graph {
    /// An empty graph of a model at `opset`.
    pub fn new(opset: i64) -> Graph {
        Graph {
            opset,
            graph: GraphProto {
                name: Some("g".into()),
                ..Default::default()
            },
        }
    }

    /// A builder continuing `model`'s graph.
    pub fn from_model(model: ModelProto) -> Graph {
        let opset = model.opset_import[0].version();
        Graph {
            opset,
            graph: model.graph.unwrap(),
        }
    }

    /// A float32 graph input of shape `dims`.
    pub fn input(mut self, name: &str, dims: &[i64]) -> Graph {
        self.graph
            .input
            .push(value_info(name, DataType::Float, dims));
        self
    }

    /// A graph output (type left to inference).
    pub fn output(mut self, name: &str) -> Graph {
        self.graph.output.push(ValueInfoProto {
            name: Some(name.into()),
            ..Default::default()
        });
        self
    }

    /// A float32 initializer.
    pub fn init(self, name: &str, dims: &[i64], values: &[f32]) -> Graph {
        self.tensor(TensorProto {
            name: Some(name.into()),
            dims: dims.to_vec(),
            data_type: Some(DataType::Float as i32),
            float_data: values.to_vec(),
            ..Default::default()
        })
    }

    /// A `Constant` node `name` holding a float32 tensor (how Paddle stores weights).
    pub fn constant(mut self, name: &str, dims: &[i64], values: &[f32]) -> Graph {
        self.graph.node.push(NodeProto {
            name: Some(format!("{name}_constant")),
            op_type: Some("Constant".into()),
            output: vec![name.to_string()],
            attribute: vec![AttributeProto {
                name: Some("value".into()),
                r#type: Some(AttributeType::Tensor as i32),
                t: Some(Box::new(TensorProto {
                    dims: dims.to_vec(),
                    data_type: Some(DataType::Float as i32),
                    float_data: values.to_vec(),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        });
        self
    }

    /// A float32 graph input whose first dimension is the symbol `N` (a batch), the rest `dims`.
    pub fn batched_input(mut self, name: &str, dims: &[i64]) -> Graph {
        let mut input = value_info(name, DataType::Float, &[1]);
        let shape = match input.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            Some(type_proto::Value::TensorType(t)) => t.shape.as_mut().expect("a shape"),
            _ => unreachable!("a tensor type"),
        };
        shape.dim[0].value = Some(dimension::Value::DimParam("N".into()));
        shape.dim.extend(dims.iter().map(|&d| Dimension {
            value: Some(dimension::Value::DimValue(d)),
            ..Default::default()
        }));
        self.graph.input.push(input);
        self
    }

    /// Any initializer.
    pub fn tensor(mut self, t: TensorProto) -> Graph {
        self.graph.initializer.push(t);
        self
    }

    /// `name.scale`, `name.bias`, `name.mean`, `name.var` of a BatchNormalization over
    /// `channels`, with scales `1, 2, …`, biases `0.5`, means `0.25` and variances `1`.
    pub fn bn_params(self, name: &str, channels: usize) -> Graph {
        let c = [channels as i64];
        let scale: Vec<f32> = (1..=channels).map(|i| i as f32).collect();
        self.init(&format!("{name}.scale"), &c, &scale)
            .init(&format!("{name}.bias"), &c, &vec![0.5; channels])
            .init(&format!("{name}.mean"), &c, &vec![0.25; channels])
            .init(&format!("{name}.var"), &c, &vec![1.0; channels])
    }

    /// A node named after its first output.
    pub fn node(self, op_type: &str, inputs: &[&str], outputs: &[&str]) -> Graph {
        self.node_with(op_type, inputs, outputs, &[])
    }

    /// A node with integer attributes.
    pub fn node_with(
        mut self,
        op_type: &str,
        inputs: &[&str],
        outputs: &[&str],
        ints: &[(&str, i64)],
    ) -> Graph {
        self.graph.node.push(NodeProto {
            name: Some(outputs[0].to_string()),
            op_type: Some(op_type.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: ints.iter().map(|&(n, v)| int_attribute(n, v)).collect(),
            ..Default::default()
        });
        self
    }

    /// An integer-list attribute on the last node.
    pub fn ints(mut self, name: &str, values: &[i64]) -> Graph {
        let node = self
            .graph
            .node
            .last_mut()
            .expect("a node to set the attribute on");
        node.attribute.push(AttributeProto {
            name: Some(name.into()),
            r#type: Some(AttributeType::Ints as i32),
            ints: values.to_vec(),
            ..Default::default()
        });
        self
    }

    /// The BatchNormalization `y = BN(x)` over the parameters of [`Graph::bn_params`] `name`.
    pub fn bn(self, name: &str, x: &str, y: &str) -> Graph {
        let p = |s: &str| format!("{name}.{s}");
        let (a, b, c, d) = (p("scale"), p("bias"), p("mean"), p("var"));
        self.node("BatchNormalization", &[x, &a, &b, &c, &d], &[y])
    }

    /// The model.
    pub fn model(self) -> ModelProto {
        ModelProto {
            ir_version: Some(if self.opset >= 13 { 7 } else { 3 }),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(self.opset),
            }],
            producer_name: Some("bnfold-tests".into()),
            graph: Some(self.graph),
            ..Default::default()
        }
    }
}

fn int_attribute(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}

fn value_info(name: &str, dtype: DataType, dims: &[i64]) -> ValueInfoProto {
    let shape = TensorShapeProto {
        dim: dims
            .iter()
            .map(|&d| Dimension {
                value: Some(dimension::Value::DimValue(d)),
                ..Default::default()
            })
            .collect(),
    };
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(dtype as i32),
                shape: Some(shape),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
